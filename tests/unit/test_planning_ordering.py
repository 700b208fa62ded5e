"""Ordering moves into waves, and the plan checker."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from livemig.planning.model import Move, Plan
from livemig.planning.ordering import check_plan, final_hosts, order_moves, waves_in_sequence
from tests.unit.planning_fleets import fleet, fleets, host, instance

FAST = settings(max_examples=150, deadline=None)


def plan_of(moves) -> Plan:
    return Plan(kind="test", moves=tuple(moves), method="test")


def test_a_chain_that_fits_only_in_one_order_runs_in_that_order():
    # a must go to h2, which is full until b has left for h3.
    f = fleet([host("h1", memory_mb=4096), host("h2", memory_mb=4096), host("h3", memory_mb=4096)],
              [instance("a", "h1", memory_mb=4096), instance("b", "h2", memory_mb=4096)])
    moves, notes = order_moves(f, {"a": "h2", "b": "h3"}, order=["a", "b"])
    assert [(m.instance_uuid, m.dest, m.wave) for m in moves] == [("b", "h3", 1), ("a", "h2", 2)]
    assert notes == ()
    assert check_plan(f, plan_of(moves)) == []


def test_the_chain_in_one_wave_is_refused_by_the_checker():
    f = fleet([host("h1", memory_mb=4096), host("h2", memory_mb=4096), host("h3", memory_mb=4096)],
              [instance("a", "h1", memory_mb=4096), instance("b", "h2", memory_mb=4096)])
    both = [Move("a", "vm-a", "h1", "h2", 1, 4096), Move("b", "vm-b", "h2", "h3", 1, 4096)]
    # A live migration holds room on both hosts: a cannot start while b is still on h2.
    assert check_plan(f, plan_of(both)) == ["wave 1: vm-a does not fit on h2 (memory_mb, memory_peak_mb)"]


def test_a_swap_between_full_hosts_stops_over_on_a_third():
    f = fleet([host("h1", memory_mb=4096), host("h2", memory_mb=4096), host("h3", memory_mb=4096)],
              [instance("a", "h1", memory_mb=4096), instance("b", "h2", memory_mb=4096)])
    moves, notes = order_moves(f, {"a": "h2", "b": "h1"})
    assert [(m.instance_uuid, m.source, m.dest, m.wave, m.stop_over) for m in moves] == [
        ("a", "h1", "h3", 1, True), ("b", "h2", "h1", 2, False), ("a", "h3", "h2", 3, False)]
    assert len(notes) == 1 and "stops over on h3" in notes[0]
    assert check_plan(f, plan_of(moves)) == []
    assert final_hosts(f, moves) == {"a": "h2", "b": "h1"}


def test_a_swap_with_no_room_anywhere_is_left_out_with_a_reason():
    f = fleet([host("h1", memory_mb=4096), host("h2", memory_mb=4096)],
              [instance("a", "h1", memory_mb=4096), instance("b", "h2", memory_mb=4096)])
    moves, notes = order_moves(f, {"a": "h2", "b": "h1"})
    assert moves == ()
    assert len(notes) == 2 and all(n.startswith("left out:") for n in notes)
    assert "does not fit on h2" in notes[0]


def test_waves_respect_each_hosts_migration_limit():
    f = fleet([host("h1", max_migrations=2, memory_mb=65536, cpus=64), host("h2", max_migrations=1),
               host("h3", max_migrations=3)],
              [instance(f"i{k}", "h1") for k in range(4)])
    moves, notes = order_moves(f, {"i0": "h2", "i1": "h2", "i2": "h3", "i3": "h3"})
    assert notes == ()
    assert [sum(1 for m in moves if m.wave == w) for w in (1, 2)] == [2, 2]
    assert check_plan(f, plan_of(moves)) == []
    too_many = [Move(f"i{k}", f"vm-i{k}", "h1", "h3", 1, 1024) for k in range(3)]
    assert check_plan(f, plan_of(too_many)) == ["wave 1: 3 migrations on h1, which allows 2"]


def test_anti_affinity_holds_while_an_instance_migrates():
    # b (group g) may only reach h2 after a (group g) has left it, not in the same wave.
    f = fleet([host("h1"), host("h2"), host("h3")],
              [instance("a", "h2", group="g"), instance("b", "h1", group="g")])
    moves, notes = order_moves(f, {"a": "h3", "b": "h2"})
    assert [(m.instance_uuid, m.wave) for m in moves] == [("a", 1), ("b", 2)]
    same_wave = [Move("a", "vm-a", "h2", "h3", 1, 1024), Move("b", "vm-b", "h1", "h2", 1, 1024)]
    assert check_plan(f, plan_of(same_wave)) == [
        "wave 1: h2 already holds an instance of anti-affinity group g"]


def test_the_checker_refuses_impossible_moves():
    f = fleet([host("h1"), host("h2", placeable=False)],
              [instance("a", "h1"), instance("b", "h1", movable=False), instance("c", "h1", allowed=frozenset({"h1"}))])
    bad = [Move("a", "vm-a", "h2", "h1", 1, 1024), Move("b", "vm-b", "h1", "h2", 2, 1024),
           Move("a", "vm-a", "h1", "h2", 3, 1024), Move("c", "vm-c", "h1", "h2", 4, 1024),
           Move("x", "vm-x", "h1", "h2", 5, 1024)]
    assert check_plan(f, plan_of(bad)) == [
        "wave 1: vm-a is on h1, not h2", "wave 2: vm-b may not move", "wave 3: h2 takes no placements",
        "wave 4: h2 takes no placements", "wave 5: there is no instance x"]


@FAST
@given(f=fleets(), data=st.data())
def test_any_target_gives_a_valid_plan_that_reaches_it_or_says_why_not(f, data):
    names = sorted(f.hosts)
    target = {uuid: data.draw(st.sampled_from(names)) for uuid in sorted(f.instances)}
    moves, notes = order_moves(f, target)
    assert check_plan(f, plan_of(moves)) == []
    where = final_hosts(f, moves)
    missed = [uuid for uuid in target if where[uuid] != target[uuid]]
    left_out = [n for n in notes if n.startswith("left out:")]
    assert len(missed) == len(left_out)
    assert all(not m.stop_over or m.dest != target[m.instance_uuid] for m in moves)
    # Deterministic.
    assert order_moves(f, target) == (moves, notes)


def test_a_sequence_is_cut_into_waves_in_its_own_order():
    f = fleet([host("h1", memory_mb=4096), host("h2", memory_mb=4096), host("h3", memory_mb=8192)],
              [instance("a", "h1", memory_mb=4096), instance("b", "h2", memory_mb=4096)])
    # b must leave h2 before a can come; then a moves on, which is a second move of a.
    steps = [("b", "h2", "h3"), ("a", "h1", "h2"), ("a", "h2", "h1")]
    moves = waves_in_sequence(f, steps)
    assert [(m.instance_uuid, m.source, m.dest, m.wave) for m in moves] == [
        ("b", "h2", "h3", 1), ("a", "h1", "h2", 2), ("a", "h2", "h1", 3)]
    assert check_plan(f, plan_of(moves)) == []
    g = fleet([host("h1", cpus=64, memory_mb=65536), host("h2"), host("h3")],
              [instance(f"i{k}", "h1") for k in range(3)])
    moves = waves_in_sequence(g, [("i0", "h1", "h2"), ("i1", "h1", "h3"), ("i2", "h1", "h2")])
    assert [m.wave for m in moves] == [1, 1, 2]  # h1 allows two migrations at once
