"""The figures a plan is judged by: the consolidation lower bound, the
imbalance measure, and the power model.

Imbalance: the population standard deviation of per-host normalised load
(Watcher's workload stabilisation and Ganeti's cluster score use it). A
host's CPU load is the sum of its instances' mean CPU over its physical
cores, its memory load the sum of their mean memory in use over its
physical memory; with `use_measured=False` the allocations over the
allocation capacity. `metric="both"` is the mean of the CPU and the memory
deviations. The hosts counted are those that take placements or hold an
instance at the start: a host in standby (empty, taking nothing) would only
add a zero no plan can change.

Power: a powered host draws `idle_watts + (peak_watts - idle_watts) * load`
with load its CPU load above, capped at 1. A host that holds nothing and
takes no placements is taken to be in standby already, and a host a
consolidation empties goes to standby: both count 0 W. kWh per day is the
watts saved over 24 hours.
"""
from __future__ import annotations

import math
import statistics
from typing import Iterable, Mapping

from livemig.planning import capacity as cap
from livemig.planning.model import Fleet

METRICS = ("cpu", "memory", "both")


def lower_bound(fleet: Fleet, headroom: float = 0.0, use_measured: bool = True) -> int:
    """No packing of `fleet` uses fewer hosts than this.

    For each resource: the hosts that must stay in use (they hold an
    unmovable instance), plus the fewest of the other usable hosts, largest
    first, whose capacities cover the rest of the demand; the maximum over
    the resources, and never less than the largest anti-affinity group.
    """
    usable = _usable_hosts(fleet)
    forced = {i.host for i in fleet.instances.values() if not i.movable}
    rooms = {name: cap.capacity(fleet.hosts[name], headroom, use_measured) for name in usable}
    total = (0.0, 0.0, 0.0, 0.0)
    for instance in fleet.instances.values():
        total = cap.add(total, cap.demand(instance, use_measured))
    bound = len(forced) if fleet.instances else 0
    for r in range(len(cap.RESOURCES)):
        rest = total[r] - sum(rooms[name][r] for name in forced if name in rooms)
        count = len(forced)
        for size in sorted((rooms[name][r] for name in usable - forced), reverse=True):
            if rest <= cap.EPSILON:
                break
            rest -= size
            count += 1
        bound = max(bound, count)
    groups: dict[str, int] = {}
    for instance in fleet.instances.values():
        if instance.group is not None:
            groups[instance.group] = groups.get(instance.group, 0) + 1
    return max([bound, *groups.values()])


def _usable_hosts(fleet: Fleet) -> set[str]:
    """Hosts that may hold an instance when the plan ends: those that take
    placements, and those that already hold one (it may stay)."""
    holding = {i.host for i in fleet.instances.values()}
    return {name for name, host in fleet.hosts.items() if host.placeable or name in holding}


def measured_hosts(fleet: Fleet) -> list[str]:
    """The hosts the imbalance measure counts, sorted."""
    return sorted(_usable_hosts(fleet))


def host_loads(fleet: Fleet, where: Mapping[str, str], metric: str = "cpu", use_measured: bool = True,
               hosts: Iterable[str] | None = None) -> dict[str, float]:
    """Normalised load per host (0.0 idle, 1.0 full; above 1.0 overloaded)
    when each instance is on `where[uuid]`; `both` is the mean of CPU and
    memory."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    names = measured_hosts(fleet) if hosts is None else list(hosts)
    cpu = dict.fromkeys(names, 0.0)
    memory = dict.fromkeys(names, 0.0)
    for uuid, host in where.items():
        if host not in cpu:
            continue
        c, m = load_of(fleet, uuid, host, use_measured)
        cpu[host] += c
        memory[host] += m
    if metric == "cpu":
        return cpu
    if metric == "memory":
        return memory
    return {name: (cpu[name] + memory[name]) / 2 for name in names}


def load_of(fleet: Fleet, uuid: str, host: str, use_measured: bool = True) -> tuple[float, float]:
    """The CPU and memory load instance `uuid` puts on `host`, normalised."""
    instance = fleet.instances[uuid]
    size = fleet.hosts[host]
    if use_measured:
        return (_share(instance.cpu_mean, size.cpus), _share(instance.memory_used_mean_mb, size.memory_mb))
    return (_share(instance.vcpus, size.alloc_vcpus), _share(instance.memory_mb, size.alloc_memory_mb))


def _share(used: float, size: float) -> float:
    return used / size if size > 0 else (0.0 if used <= 0 else math.inf)


def imbalance(fleet: Fleet, where: Mapping[str, str], metric: str = "cpu", use_measured: bool = True) -> float:
    """The imbalance measure (see the module docstring)."""
    if metric == "both":
        return (imbalance(fleet, where, "cpu", use_measured) + imbalance(fleet, where, "memory", use_measured)) / 2
    loads = list(host_loads(fleet, where, metric, use_measured).values())
    return statistics.pstdev(loads) if len(loads) > 1 else 0.0


def watts(fleet: Fleet, where: Mapping[str, str], standby: Iterable[str] = ()) -> float:
    """The fleet's draw under the linear power model when each instance is on
    `where[uuid]` and the hosts in `standby` are powered down."""
    off = set(standby)
    cpu = host_loads(fleet, where, "cpu", use_measured=True, hosts=fleet.hosts)
    holding = set(where.values())
    total = 0.0
    for name, host in fleet.hosts.items():
        if name in off or (name not in holding and not host.placeable):
            continue
        total += host.idle_watts + (host.peak_watts - host.idle_watts) * min(1.0, cpu[name])
    return total


def kwh_per_day(watts_saved: float) -> float:
    return watts_saved * 24 / 1000
