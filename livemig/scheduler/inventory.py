"""The scheduler's snapshot, read from the inventory in a few grouped queries
(the same accounting as livemig.prechecks.placed_on, for every host at once)."""
from __future__ import annotations

import collections
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from livemig.persistence.inventory import unfinished
from livemig.persistence.models import Host, Instance, Migration
from livemig.prechecks import NO_MIGRATION
from livemig.scheduler.state import Disk, HostState, InstanceRequest, Snapshot
from livemig.states import InstanceState


def instance_networks(interfaces: Iterable[Any] | None) -> frozenset[str]:
    """The bridges and libvirt networks an instance's recorded interfaces use."""
    names = set()
    for iface in interfaces or ():
        if isinstance(iface, dict):
            for key in ("bridge", "network"):
                if iface.get(key):
                    names.add(iface[key])
    return frozenset(names)


def instance_disks(volumes: Iterable[Any] | None) -> tuple[Disk, ...]:
    return tuple(Disk(target=str(v.get("target", "?")), kind=str(v.get("kind", "file")), source=v.get("source") or "")
                 for v in volumes or () if isinstance(v, dict))


def instance_request(instance: Instance) -> InstanceRequest:
    return InstanceRequest(uuid=instance.uuid, name=instance.name, host=instance.host, vcpus=instance.vcpus,
                           memory_mb=instance.memory_mb, disk_gb=instance.disk_gb, cpu_model=instance.cpu_model,
                           networks=instance_networks(instance.interfaces), group=instance.group,
                           disks=instance_disks(instance.volumes))


def snapshot(session: Session, *, exclude_migration: int | None = None) -> Snapshot:
    """Every host and every placed instance. A host's use is its instances
    (any state but deleted) plus its unfinished incoming migrations (they
    will land there), leaving out `exclude_migration` (the migration being
    scheduled, so that its own earlier choice does not count against it);
    its busy slots are its unfinished migrations, in and out."""
    exclude = NO_MIGRATION if exclude_migration is None else exclude_migration
    used: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    groups: dict[str, set[str]] = collections.defaultdict(set)
    busy: collections.Counter[str] = collections.Counter()
    instances: dict[str, InstanceRequest] = {}
    for inst in session.scalars(sa.select(Instance).where(Instance.host.is_not(None),
                                                          Instance.state != InstanceState.DELETED.value)):
        instances[inst.uuid] = instance_request(inst)
        totals = used[inst.host]
        totals[0] += inst.vcpus
        totals[1] += inst.memory_mb
        totals[2] += inst.disk_gb
        if inst.group:
            groups[inst.host].add(inst.group)
    rows = session.execute(
        sa.select(Migration.id, Migration.source_host, Migration.dest_host, Instance.host, Instance.vcpus,
                  Instance.memory_mb, Instance.disk_gb, Instance.group)
        .outerjoin(Instance, Instance.uuid == Migration.instance_uuid)
        .where(unfinished(Migration.status)))
    for mid, source, dest, on, vcpus, memory_mb, disk_gb, group in rows:
        if mid == exclude:
            continue
        busy[source] += 1
        if dest != source:
            busy[dest] += 1
        if on is not None and on != dest:  # not landed yet: count it where it is going
            totals = used[dest]
            totals[0] += vcpus or 0
            totals[1] += memory_mb or 0
            totals[2] += disk_gb or 0
            if group:
                groups[dest].add(group)
    hosts = {}
    for host in session.scalars(sa.select(Host)):
        vcpus, memory_mb, disk_gb = used[host.name]
        hosts[host.name] = HostState(
            name=host.name, zone=host.zone, enabled=host.enabled, maintenance=host.maintenance,
            vcpus_total=host.vcpus * host.cpu_allocation_ratio,
            memory_mb_total=host.memory_mb * host.ram_allocation_ratio,
            disk_gb_total=host.disk_gb * host.disk_allocation_ratio,
            vcpus_used=vcpus, memory_mb_used=memory_mb, disk_gb_used=disk_gb, cpu_model=host.cpu_model,
            hypervisor_version=host.hypervisor_version, networks=frozenset(host.networks or ()),
            slots=host.max_concurrent_migrations, busy=busy[host.name], groups=frozenset(groups[host.name]),
            shared_paths=tuple(host.shared_paths or ()), disabled_reason=host.disabled_reason,
            maintenance_reason=host.maintenance_reason, standby=host.standby, standby_reason=host.standby_reason)
    return Snapshot(hosts=hosts, instances=instances)
