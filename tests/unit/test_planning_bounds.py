"""The consolidation lower bound, the imbalance measure and the power model."""
from __future__ import annotations

import pytest

from livemig.planning.bounds import host_loads, imbalance, kwh_per_day, lower_bound, watts
from livemig.planning.capacity import current_hosts
from tests.unit.planning_fleets import fleet, host, instance


def test_lower_bound_takes_the_largest_hosts_first():
    # 20 GiB of allocations: one 16 GiB host and one 8 GiB host cover it, the 4 GiB ones are not needed.
    f = fleet([host("big", memory_mb=16384, cpus=16), host("mid", memory_mb=8192), host("s1", memory_mb=4096),
               host("s2", memory_mb=4096)],
              [instance(f"i{k}", "s1", memory_mb=4096) for k in range(5)])
    assert lower_bound(f) == 2


def test_lower_bound_is_the_largest_over_resources_groups_and_pinned_hosts():
    hosts = [host(f"h{k}", cpus=4, memory_mb=65536) for k in range(4)]
    # 10 vCPUs on 4-core hosts: three hosts, though memory needs one.
    assert lower_bound(fleet(hosts, [instance(f"i{k}", "h0", vcpus=2) for k in range(5)])) == 3
    # Four members of one anti-affinity group need four hosts.
    assert lower_bound(fleet(hosts, [instance(f"i{k}", "h0", group="g") for k in range(4)])) == 4
    # Two unmovable instances on two hosts keep both in use.
    assert lower_bound(fleet(hosts, [instance("a", "h0", movable=False), instance("b", "h1", movable=False)])) == 2


def test_lower_bound_counts_measured_peaks_against_the_headroom():
    hosts = [host(f"h{k}", cpus=10, memory_mb=65536, ratio=4.0) for k in range(4)]
    busy = [instance(f"i{k}", "h0", vcpus=4, cpu=3.0) for k in range(6)]  # 18 cores of peak
    assert lower_bound(fleet(hosts, busy), headroom=0.0) == 2
    assert lower_bound(fleet(hosts, busy), headroom=0.2) == 3  # 8 cores a host
    assert lower_bound(fleet(hosts, busy), use_measured=False) == 1  # 24 of 160 vCPUs


def test_lower_bound_leaves_out_hosts_that_can_hold_nothing():
    f = fleet([host("h0", memory_mb=4096), host("off", memory_mb=65536, placeable=False)],
              [instance(f"i{k}", "h0", memory_mb=4096) for k in range(2)])
    # The big host takes nothing and holds nothing, so it is no help: the bound stops at the one usable host.
    assert lower_bound(f) == 1


def test_imbalance_is_the_standard_deviation_of_normalised_load():
    f = fleet([host("a", cpus=4), host("b", cpus=8), host("off", placeable=False)],
              [instance("x", "a", vcpus=4, cpu=2.5), instance("y", "b", vcpus=2, cpu=1.0)])
    where = current_hosts(f)
    # cpu_mean is 80% of the peak: 2.0 of 4 cores and 0.8 of 8; the empty standby host is not counted.
    assert host_loads(f, where) == pytest.approx({"a": 0.5, "b": 0.1})
    assert imbalance(f, where) == pytest.approx(0.2)
    assert imbalance(f, where, use_measured=False) == pytest.approx(abs(4 / 4 - 2 / 8) / 2)
    memory = imbalance(f, where, "memory")
    assert imbalance(f, where, "both") == pytest.approx((0.2 + memory) / 2)
    with pytest.raises(ValueError):
        host_loads(f, where, "disk")


def test_power_is_linear_in_cpu_load_and_standby_hosts_draw_nothing():
    f = fleet([host("a", cpus=4), host("b", cpus=4), host("off", placeable=False)],
              [instance("x", "a", vcpus=4, cpu=2.5)])
    where = current_hosts(f)
    # a at 50% CPU: 100 + 150 * 0.5; b idle: 100; off is empty and takes nothing: standby.
    assert watts(f, where) == pytest.approx(275.0)
    assert watts(f, where, standby=["b"]) == pytest.approx(175.0)
    assert kwh_per_day(100.0) == pytest.approx(2.4)
