"""The planner benchmark's own code: the seeded fleet generator, the two
Watcher-like baselines, and the benchmark's per-fleet cases on tiny fleets
(so benchmarks/planners.py cannot rot)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings

from benchmarks import planners
from benchmarks.planner_fleets import HARD_KINDS, fleet_number, generate, sized_fleet
from benchmarks.watcher_baselines import (
    _collapse_chains, applier_plan, sequential_plan, watcher_consolidation, watcher_stabilization)
from livemig.planning import bounds
from livemig.planning import capacity as cap
from livemig.planning.ordering import check_plan
from tests.unit.planning_fleets import fleet, fleets, host, instance

FAST = settings(max_examples=60, deadline=None)


def _allocations_fit(f) -> bool:
    occupancy = cap.Occupancy.of(f, cap.current_hosts(f), use_measured=False)
    return all(cap.fits(occupancy.load[h], occupancy.room[h]) for h in f.hosts)


def test_fleet_number_is_the_same_fleet_every_time():
    assert fleet_number(5) == fleet_number(5)
    assert fleet_number(5) != fleet_number(6)


@pytest.mark.parametrize("kind", HARD_KINDS)
def test_hard_fleets_have_a_perfect_packing_at_the_lower_bound(kind):
    generated = generate(random.Random(kind), 0, kind, 30)
    f = generated.fleet
    # Every item is built to fill hosts exactly, so the bound is the optimum.
    assert generated.known_optimum == bounds.lower_bound(f)
    assert len(f.hosts) > generated.known_optimum
    assert _allocations_fit(f)


def test_mixed_fleets_are_scattered_with_overloaded_hosts():
    f = generate(random.Random("mixed"), 0, "mixed", 40).fleet
    assert _allocations_fit(f)
    # Scattered: every host holds something, far more than the bound needs.
    assert len(set(cap.current_hosts(f).values())) == 40 > 2 * bounds.lower_bound(f)
    cpu = bounds.host_loads(f, cap.current_hosts(f), "cpu")
    assert max(cpu.values()) > 1.0 > min(cpu.values())


def test_sized_fleet_has_the_asked_size():
    f = sized_fleet(30, 200).fleet
    assert (len(f.hosts), len(f.instances)) == (30, 200)


def test_collapse_chains_keeps_one_move_per_instance_at_the_end():
    steps = [("x", "a", "b"), ("y", "c", "d"), ("x", "b", "e"), ("z", "a", "b"), ("z", "b", "a")]
    assert _collapse_chains(steps) == (("y", "c", "d"), ("x", "a", "e"))


def _received_fit(f, result) -> None:
    """Every host that the baseline moved something onto ends within its
    capacity, with no other instance of that one's anti-affinity group; only
    movable instances moved, to hosts that may take them."""
    end = cap.Occupancy.of(f, dict(result.where))
    start = cap.current_hosts(f)
    for uuid, source, dest in result.steps:
        assert f.instances[uuid].movable and source != dest
        assert cap.may_receive(f.hosts[dest], f.instances[uuid])
    for uuid, host in result.where.items():
        if host != start[uuid]:
            assert cap.fits(end.load[host], end.room[host]), (uuid, host)
            group = f.instances[uuid].group
            assert group is None or end.groups[host][group] == 1, (uuid, host)


@FAST
@given(fleets())
def test_watcher_consolidation_never_overfills_a_host(f):
    result = watcher_consolidation(f)
    _received_fit(f, result)
    # Its moves, one at a time, end where it says.
    assert dict(result.where) == {**cap.current_hosts(f), **{u: d for u, _, d in result.steps}}
    assert set(result.disabled) == set(bounds.measured_hosts(f)) - set(result.where.values())


@FAST
@given(fleets())
def test_watcher_stabilization_never_overfills_a_host_nor_raises_the_imbalance(f):
    result = watcher_stabilization(f, threshold=0.0)
    _received_fit(f, result)
    start = cap.current_hosts(f)
    assert bounds.imbalance(f, dict(result.where)) <= bounds.imbalance(f, start) + 1e-9
    # Each step was possible once the ones before it had ended.
    assert check_plan(f, sequential_plan(f, result)) == []


def test_watcher_consolidation_packs_four_half_hosts_into_two():
    f = fleet([host(f"h{k}", cpus=8, memory_mb=8192) for k in range(4)],
              [instance(f"i{k}", f"h{k % 4}", vcpus=1, memory_mb=2048, cpu=0.1 * (k + 1)) for k in range(8)])
    result = watcher_consolidation(f)
    assert len(set(result.where.values())) == 2 and len(result.disabled) == 2


def test_watcher_applier_runs_two_at_a_time_and_can_break_a_host_limit():
    # Two hosts empty onto the fullest one, which allows one migration at a
    # time: Watcher's weight planner starts both moves together.
    hosts = [host("a", max_migrations=2), host("b", max_migrations=2), host("c", max_migrations=1)]
    f = fleet(hosts, [instance("x", "a", cpu=0.1, memory_mb=1024), instance("y", "b", cpu=0.2, memory_mb=1024),
                      instance("z", "c", cpu=4.0, memory_mb=4096)])
    result = watcher_consolidation(f)
    assert [(s, d) for _, s, d in result.steps] == [("a", "c"), ("b", "c")]
    assert check_plan(f, sequential_plan(f, result)) == []
    assert check_plan(f, applier_plan(f, result)) == ["wave 1: 2 migrations on c, which allows 1"]


@pytest.mark.parametrize("kind", ("mixed", *HARD_KINDS))
def test_benchmark_cases_run_on_tiny_fleets(kind):
    generated = generate(random.Random(f"tiny-{kind}"), 0, kind, 10)
    consolidation = planners.consolidation_case(generated, time_limit_s=2.0)
    rebalance = planners.rebalance_case(generated)
    lower = consolidation["lower_bound"]
    assert consolidation["livemig"]["violations"] == 0 == consolidation["livemig"]["crowded_after"]
    assert consolidation["livemig"]["hosts_after"] >= lower and consolidation["watcher"]["hosts_after"] >= lower
    assert consolidation["watcher"]["crowded_after"] == 0
    assert rebalance["livemig"]["violations"] == 0
    assert rebalance["livemig"]["imbalance_after"] <= rebalance["imbalance_before"] + 1e-9
    assert rebalance["watcher"]["imbalance_after"] <= rebalance["imbalance_before"] + 1e-9
    rows = planners.consolidation_rows([consolidation])
    assert [row[1] for row in rows] == ["livemig", "watcher"] * 2
    if kind == "mixed":
        assert [row[0] for row in planners.rebalance_rows([rebalance])] == ["livemig", "watcher"]
