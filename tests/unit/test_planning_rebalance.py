"""The rebalance planner: valid plans that lower the imbalance and keep to
their limits."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from livemig.planning.bounds import imbalance
from livemig.planning.capacity import current_hosts
from livemig.planning.ordering import check_plan, final_hosts
from livemig.planning.rebalance import plan_rebalance
from tests.unit.planning_fleets import fleet, fleets, host, instance

FAST = settings(max_examples=80, deadline=None)


def busy_fleet(**kwargs):
    """Four instances of 2 busy cores on h0, none on h1 and h2 (8 cores each)."""
    return fleet([host("h0"), host("h1"), host("h2")],
                 [instance(f"i{k}", "h0", vcpus=2, cpu=2.5, **kwargs) for k in range(4)])


def test_a_loaded_host_sheds_instances_to_the_idle_ones():
    f = busy_fleet()
    plan = plan_rebalance(f, threshold=0.0, min_gain=0.0001)
    assert check_plan(f, plan) == []
    end = final_hosts(f, plan.moves)
    assert sorted(list(end.values()).count(h) for h in ("h0", "h1", "h2")) == [1, 1, 2]
    assert len(plan.moves) == 2
    # cpu_mean is 2.0 a core: h0 holds 8.0 of 8 cores.
    assert plan.host_load_before == pytest.approx({"h0": 1.0, "h1": 0.0, "h2": 0.0})
    assert sorted(plan.host_load_after.values()) == pytest.approx([0.25, 0.25, 0.5])
    assert plan.figures["imbalance_before"] == pytest.approx(imbalance(f, current_hosts(f)))
    assert plan.figures["imbalance_after"] == pytest.approx(imbalance(f, end))
    assert plan.figures["imbalance_after"] < plan.figures["imbalance_before"]
    assert plan.kind == "rebalance" and plan.method == "greedy"


def test_it_stops_below_the_threshold_and_at_max_moves():
    f = busy_fleet()
    one = plan_rebalance(f, threshold=0.0, min_gain=0.0001, max_moves=1)
    assert len(one.moves) == 1
    # Loads 1, 0, 0 deviate by 0.47; after one move (0.75, 0.25, 0) by 0.31.
    assert len(plan_rebalance(f, threshold=0.36, min_gain=0.0001).moves) == 1
    assert plan_rebalance(f, threshold=0.5).moves == ()
    assert plan_rebalance(f, min_gain=0.5).moves == ()


def test_anti_affinity_and_allowed_hosts_bind_the_moves():
    f = busy_fleet(group="g")  # four of one group on h0 already: each may only go where none is
    end = final_hosts(f, plan_rebalance(f, threshold=0.0, min_gain=0.0001).moves)
    assert sorted(end.values()).count("h1") <= 1 and sorted(end.values()).count("h2") <= 1
    pinned = busy_fleet(allowed=frozenset({"h0", "h2"}))
    end = final_hosts(pinned, plan_rebalance(pinned, threshold=0.0, min_gain=0.0001).moves)
    assert "h1" not in end.values() and list(end.values()).count("h2") == 2


def test_memory_and_both_metrics():
    f = fleet([host("h0", memory_mb=8192), host("h1", memory_mb=8192)],
              [instance(f"i{k}", "h0", memory_mb=2048, cpu=0.0) for k in range(4)])
    assert plan_rebalance(f, metric="cpu").moves == ()  # no CPU load to spread
    memory = plan_rebalance(f, metric="memory", threshold=0.0, min_gain=0.0001)
    assert len(memory.moves) == 2 and memory.figures["imbalance_after"] == pytest.approx(0.0)
    assert len(plan_rebalance(f, metric="both", threshold=0.0, min_gain=0.0001).moves) == 2
    with pytest.raises(ValueError):
        plan_rebalance(f, metric="disk")


@FAST
@given(f=fleets(), metric=st.sampled_from(["cpu", "memory", "both"]), max_moves=st.integers(0, 6),
       min_gain=st.sampled_from([0.0, 0.001, 0.02]), use_measured=st.booleans())
def test_rebalance_is_valid_never_worse_and_within_its_limits(f, metric, max_moves, min_gain, use_measured):
    plan = plan_rebalance(f, metric=metric, threshold=0.0, min_gain=min_gain, max_moves=max_moves,
                          use_measured=use_measured)
    assert check_plan(f, plan, use_measured=use_measured) == []
    before = imbalance(f, current_hosts(f), metric, use_measured)
    after = imbalance(f, final_hosts(f, plan.moves), metric, use_measured)
    assert after <= before + 1e-9
    assert len(plan.moves) <= max_moves
    assert before - after >= len(plan.moves) * min_gain - 1e-9
    assert plan == plan_rebalance(f, metric=metric, threshold=0.0, min_gain=min_gain, max_moves=max_moves,
                                  use_measured=use_measured)
