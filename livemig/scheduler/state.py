"""What the scheduler sees: hosts with their capacity and use, and the
instances to place. Frozen values, so a plan can try a placement and keep
the snapshot it started from."""
from __future__ import annotations

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class HostState:
    """One host as the scheduler sees it."""

    name: str
    zone: str
    enabled: bool
    maintenance: bool
    # Capacity times the host's allocation ratio.
    vcpus_total: float
    memory_mb_total: float
    disk_gb_total: float
    # Placed there, plus unfinished incoming migrations, plus what the current
    # plan has put there so far.
    vcpus_used: int
    memory_mb_used: int
    disk_gb_used: int
    cpu_model: str | None
    hypervisor_version: int
    networks: frozenset[str]
    # max_concurrent_migrations, and the migrations (in plus out) in flight.
    slots: int
    busy: int
    # The anti-affinity group labels of the instances placed there.
    groups: frozenset[str] = frozenset()
    # Paths this host shares with the others (Host.shared_paths).
    shared_paths: tuple[str, ...] = ()
    disabled_reason: str | None = None
    maintenance_reason: str | None = None
    # Emptied by a consolidation: no placements until `host wake`.
    standby: bool = False
    standby_reason: str | None = None

    @property
    def vcpus_free(self) -> float:
        return self.vcpus_total - self.vcpus_used

    @property
    def memory_mb_free(self) -> float:
        return self.memory_mb_total - self.memory_mb_used

    @property
    def disk_gb_free(self) -> float:
        return self.disk_gb_total - self.disk_gb_used


@dataclasses.dataclass(frozen=True)
class Disk:
    """What the storage filter needs of a disk (see livemig.disk_sharing)."""

    target: str
    kind: str
    source: str


@dataclasses.dataclass(frozen=True)
class InstanceRequest:
    """An instance to place: what it needs of a host."""

    uuid: str
    name: str
    host: str | None
    vcpus: int
    memory_mb: int
    disk_gb: int
    cpu_model: str | None
    # The bridges and libvirt networks its interfaces use.
    networks: frozenset[str]
    group: str | None = None
    disks: tuple[Disk, ...] = ()


@dataclasses.dataclass(frozen=True)
class Snapshot:
    hosts: Mapping[str, HostState]
    instances: Mapping[str, InstanceRequest]  # by uuid

    def place(self, instance: InstanceRequest, dest: str) -> "Snapshot":
        """The snapshot after planning `instance` onto `dest`. A live migration
        holds room on both hosts until it ends, so its use is counted on the
        destination and kept on the source; it takes a migration slot on both."""
        hosts = dict(self.hosts)
        target = hosts[dest]
        groups = target.groups | {instance.group} if instance.group else target.groups
        hosts[dest] = dataclasses.replace(
            target, vcpus_used=target.vcpus_used + instance.vcpus,
            memory_mb_used=target.memory_mb_used + instance.memory_mb,
            disk_gb_used=target.disk_gb_used + instance.disk_gb, busy=target.busy + 1, groups=groups)
        if instance.host in hosts and instance.host != dest:
            source = hosts[instance.host]
            hosts[instance.host] = dataclasses.replace(source, busy=source.busy + 1)
        return Snapshot(hosts=hosts, instances=self.instances)
