"""What an instance takes of a host and what a host can hold, as one vector.

Four resources are held at once: the allocation (vCPUs, memory) against the
host's allocation capacity (the scheduler's rule), and the measured peak
(CPU cores, memory in use) against the host's physical size less the
headroom. With `use_measured=False` only the allocation counts. The headroom
is kept free of the physical size; allocations always have the whole
allocation capacity, as the scheduler gives them.

A live migration holds room on both hosts until it ends (as
`livemig.scheduler.state.Snapshot.place` counts it): `Occupancy` is what
the planners and the plan checker add and take away as moves start and end.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, Mapping

from livemig.planning.model import Fleet, HostCapacity, InstanceDemand

RESOURCES = ("vcpus", "memory_mb", "cpu_peak", "memory_peak_mb")
# Float sums of measured loads: a plan that fits to within this is taken to fit.
EPSILON = 1e-6

Vector = tuple[float, float, float, float]


def demand(instance: InstanceDemand, use_measured: bool = True) -> Vector:
    if not use_measured:
        return (float(instance.vcpus), float(instance.memory_mb), 0.0, 0.0)
    return (float(instance.vcpus), float(instance.memory_mb), instance.cpu_peak, instance.memory_used_peak_mb)


def capacity(host: HostCapacity, headroom: float = 0.0, use_measured: bool = True) -> Vector:
    if not use_measured:
        return (host.alloc_vcpus, host.alloc_memory_mb, math.inf, math.inf)
    keep = 1.0 - headroom
    return (host.alloc_vcpus, host.alloc_memory_mb, host.cpus * keep, host.memory_mb * keep)


def add(a: Vector, b: Vector) -> Vector:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])


def subtract(a: Vector, b: Vector) -> Vector:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3])


def fits(load: Vector, room: Vector) -> bool:
    return all(used <= size + EPSILON for used, size in zip(load, room))


def exceeded(load: Vector, room: Vector) -> list[str]:
    """The resources of `load` over `room`, by name."""
    return [name for name, used, size in zip(RESOURCES, load, room) if used > size + EPSILON]


def may_receive(host: HostCapacity, instance: InstanceDemand) -> bool:
    """The hard rules that do not depend on what else is there: the host takes
    placements and the instance may go to it."""
    return host.placeable and (instance.allowed_hosts is None or host.name in instance.allowed_hosts)


class Occupancy:
    """Per host: the summed demand and the anti-affinity groups of the
    instances that hold room there (running there, or migrating in or out)."""

    def __init__(self, fleet: Fleet, headroom: float = 0.0, use_measured: bool = True) -> None:
        self.fleet = fleet
        self.headroom = headroom
        self.use_measured = use_measured
        self.room = {name: capacity(host, headroom, use_measured) for name, host in fleet.hosts.items()}
        self.demands = {uuid: demand(i, use_measured) for uuid, i in fleet.instances.items()}
        self.load: dict[str, Vector] = dict.fromkeys(fleet.hosts, (0.0, 0.0, 0.0, 0.0))
        self.groups: dict[str, dict[str, int]] = {name: {} for name in fleet.hosts}

    @classmethod
    def of(cls, fleet: Fleet, where: Mapping[str, str], headroom: float = 0.0,
           use_measured: bool = True) -> "Occupancy":
        """The occupancy when each instance (by uuid) is on `where[uuid]`."""
        occupancy = cls(fleet, headroom, use_measured)
        for uuid, host in where.items():
            occupancy.hold(uuid, host)
        return occupancy

    def copy(self) -> "Occupancy":
        other = copy.copy(self)
        other.load = dict(self.load)
        other.groups = {host: dict(groups) for host, groups in self.groups.items()}
        return other

    def free(self, host: str) -> Vector:
        return subtract(self.room[host], self.load[host])

    def demand(self, uuid: str) -> Vector:
        return self.demands[uuid]

    def hold(self, uuid: str, host: str) -> None:
        self.load[host] = add(self.load[host], self.demand(uuid))
        group = self.fleet.instances[uuid].group
        if group is not None:
            self.groups[host][group] = self.groups[host].get(group, 0) + 1

    def release(self, uuid: str, host: str) -> None:
        self.load[host] = subtract(self.load[host], self.demand(uuid))
        group = self.fleet.instances[uuid].group
        if group is not None:
            self.groups[host][group] -= 1
            if not self.groups[host][group]:
                del self.groups[host][group]

    def why_not(self, uuid: str, host: str) -> str | None:
        """Why `host` cannot take instance `uuid` on top of what it holds now
        (None when it can)."""
        instance = self.fleet.instances[uuid]
        target = self.fleet.hosts[host]
        if not target.placeable:
            return f"{host} takes no placements"
        if instance.allowed_hosts is not None and host not in instance.allowed_hosts:
            return f"{instance.name} may not run on {host}"
        if instance.group is not None and self.groups[host].get(instance.group):
            return f"{host} already holds an instance of anti-affinity group {instance.group}"
        over = exceeded(add(self.load[host], self.demand(uuid)), self.room[host])
        if over:
            return f"{instance.name} does not fit on {host} ({', '.join(over)})"
        return None

    def can_take(self, uuid: str, host: str) -> bool:
        """`why_not(...) is None`, without the words: the packers ask it often."""
        instance = self.fleet.instances[uuid]
        if not may_receive(self.fleet.hosts[host], instance):
            return False
        if instance.group is not None and self.groups[host].get(instance.group):
            return False
        return fits(add(self.load[host], self.demand(uuid)), self.room[host])


def crowded_hosts(fleet: Fleet, where: Mapping[str, str], headroom: float = 0.0,
                  use_measured: bool = True) -> list[str]:
    """The hosts over capacity, or holding two instances of one anti-affinity
    group, when each instance is on `where[uuid]`: sorted."""
    occupancy = Occupancy.of(fleet, where, headroom, use_measured)
    return sorted(h for h in fleet.hosts if not fits(occupancy.load[h], occupancy.room[h])
                  or any(n > 1 for n in occupancy.groups[h].values()))


def current_hosts(fleet: Fleet) -> dict[str, str]:
    """Where each instance (by uuid) runs now."""
    return {uuid: instance.host for uuid, instance in fleet.instances.items()}


def used_hosts(where: Mapping[str, str]) -> set[str]:
    return set(where.values())


def sorted_uuids(fleet: Fleet, uuids: Iterable[str] | None = None) -> list[str]:
    """Instances largest first (memory, then vCPUs), ties by uuid: the order
    first-fit decreasing wants, and one that does not depend on dict order."""
    chosen = fleet.instances if uuids is None else uuids
    return sorted(chosen, key=lambda u: (-fleet.instances[u].memory_mb, -fleet.instances[u].vcpus, u))
