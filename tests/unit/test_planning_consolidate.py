"""The consolidation planner: valid plans, never below the lower bound,
optimal where exhaustive search knows the optimum."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings

from livemig.planning import capacity as cap
from livemig.planning.bounds import lower_bound
from livemig.planning.consolidate import plan_consolidation
from livemig.planning.ordering import check_plan, final_hosts
from tests.unit.planning_fleets import fleet, fleets, host, instance

FAST = settings(max_examples=60, deadline=None)


def optimum(f, headroom=0.0, use_measured=True) -> tuple[int, int, int]:
    """The best (hosts used, moves, memory moved) over every assignment, by
    depth-first search with the hosts used so far as the bound."""
    uuids = cap.sorted_uuids(f)
    best = [(math.inf, 0, 0)]
    occupancy = cap.Occupancy(f, headroom, use_measured)

    def options(uuid):
        instance = f.instances[uuid]
        here = [instance.host]
        if not instance.movable:
            return here
        return here + [h for h in sorted(f.hosts) if h != instance.host and cap.may_receive(f.hosts[h], instance)]

    def stays_ok(uuid, h):
        group = f.instances[uuid].group
        if group is not None and occupancy.groups[h].get(group):
            return False
        return cap.fits(cap.add(occupancy.load[h], occupancy.demand(uuid)), occupancy.room[h])

    def search(k, used, moves, memory):
        if len(used) > best[0][0]:
            return
        if k == len(uuids):
            best[0] = min(best[0], (len(used), moves, memory))
            return
        uuid = uuids[k]
        for h in options(uuid):
            if not stays_ok(uuid, h):
                continue
            moved = h != f.instances[uuid].host
            occupancy.hold(uuid, h)
            search(k + 1, used | {h}, moves + moved, memory + (f.instances[uuid].memory_mb if moved else 0))
            occupancy.release(uuid, h)

    search(0, frozenset(), 0, 0)
    return best[0]


def outcome(f, plan) -> tuple[int, int, int]:
    end = final_hosts(f, plan.moves)
    moved = [u for u in end if end[u] != f.instances[u].host]
    return len(set(end.values())), len(moved), sum(f.instances[u].memory_mb for u in moved)


def test_four_half_empty_hosts_fold_into_two():
    f = fleet([host(f"h{k}") for k in range(4)], [instance(f"i{k}", f"h{k % 4}", memory_mb=2048) for k in range(8)])
    plan = plan_consolidation(f)
    assert check_plan(f, plan) == []
    assert plan.method == "cp-sat" and plan.optimal
    assert len(plan.emptied) == 2
    assert plan.figures["hosts_before"] == 4 and plan.figures["hosts_after"] == 2 == plan.figures["lower_bound"]
    assert plan.figures["moves"] == 4 and plan.figures["memory_to_copy_mb"] == 4 * 2048
    # Two idle hosts of 100 W go to standby: 200 W, 4.8 kWh a day.
    assert plan.figures["watts_before"] - plan.figures["watts_after"] == pytest.approx(200.0)
    assert plan.figures["kwh_per_day_saved"] == pytest.approx(4.8)


def test_headroom_keeps_hosts_below_their_measured_peak():
    hosts = [host(f"h{k}", cpus=10, memory_mb=65536, ratio=4.0) for k in range(3)]
    f = fleet(hosts, [instance(f"i{k}", f"h{k % 3}", vcpus=4, cpu=3.0) for k in range(6)])  # 18 cores of peak
    assert plan_consolidation(f).figures["hosts_after"] == 2
    tight = plan_consolidation(f, headroom=0.2)  # 8 cores a host: two instances each
    assert tight.figures["hosts_after"] == 3 and tight.moves == ()
    assert plan_consolidation(f, use_measured=False).figures["hosts_after"] == 1


def test_unmovable_instances_and_hosts_that_take_nothing():
    f = fleet([host("h0"), host("h1"), host("off", placeable=False)],
              [instance("pinned", "h0", movable=False), instance("a", "h1"), instance("b", "off")])
    plan = plan_consolidation(f)
    assert check_plan(f, plan) == []
    assert final_hosts(f, plan.moves) == {"pinned": "h0", "a": "h0", "b": "h0"}
    assert plan.emptied == ("h1", "off")


def test_max_moves_caps_the_plan():
    f = fleet([host(f"h{k}") for k in range(4)], [instance(f"i{k}", f"h{k % 4}", memory_mb=2048) for k in range(8)])
    plan = plan_consolidation(f, max_moves=2)
    assert len(plan.moves) == 2 and plan.figures["hosts_after"] == 3
    assert check_plan(f, plan) == []


def test_the_heuristic_packs_and_meeting_the_bound_proves_it_optimal():
    f = fleet([host(f"h{k}") for k in range(4)], [instance(f"i{k}", f"h{k % 4}", memory_mb=2048) for k in range(8)])
    plan = plan_consolidation(f, method="first-fit-decreasing")
    assert plan.method == "first-fit-decreasing"
    assert check_plan(f, plan) == []
    # It meets the lower bound, which proves it optimal.
    assert plan.figures["hosts_after"] == 2 and plan.optimal


def test_bad_arguments_are_refused():
    f = fleet([host("h0")], [])
    with pytest.raises(ValueError):
        plan_consolidation(f, headroom=1.0)
    with pytest.raises(ValueError):
        plan_consolidation(f, max_moves=-1)
    with pytest.raises(ValueError):
        plan_consolidation(f, method="simplex")


@FAST
@given(f=fleets(max_hosts=5, max_instances=7))
def test_consolidation_is_valid_bounded_optimal_and_deterministic(f):
    plan = plan_consolidation(f, time_limit_s=5)
    assert check_plan(f, plan) == []
    got = outcome(f, plan)
    if not cap.crowded_hosts(f, final_hosts(f, plan.moves)):
        assert got[0] >= lower_bound(f)
    best = optimum(f)
    if best[0] == math.inf:
        # The fleet is over capacity where nothing can move: no packing exists.
        assert not plan.optimal
    elif not any(n.startswith("left out") for n in plan.notes):
        assert got == best
    if plan.optimal:
        assert got[0] == best[0]
    assert plan_consolidation(f, time_limit_s=5) == plan


@FAST
@given(f=fleets(max_hosts=6, max_instances=8))
def test_the_heuristic_is_valid_and_never_below_the_bound(f):
    plan = plan_consolidation(f, headroom=0.1, method="first-fit-decreasing")
    assert check_plan(f, plan, headroom=0.1) == []
    if not cap.crowded_hosts(f, final_hosts(f, plan.moves), headroom=0.1):
        assert outcome(f, plan)[0] >= lower_bound(f, headroom=0.1)
    assert plan.method == "first-fit-decreasing"
