"""The checks a live migration must pass, shared by the API (to refuse bad
input before anything is recorded) and the flow's precheck step (to re-check
when the migration really starts, which may be much later on a jobboard)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from livemig.disk_sharing import judge_disks, refusal
from livemig.drivers.registry import DriverRegistry
from livemig.errors import (
    Conflict, CpuIncompatible, HostDisabled, HostInMaintenance, HostInStandby, HostUnreachable, InstanceNotOnSource,
    InsufficientCapacity, InvalidInput, PrecheckFailed,
)
from livemig.persistence.inventory import find_instance, get_hosts, unfinished, unfinished_migrations
from livemig.persistence.models import Host, Instance, Migration
from livemig.states import InstanceState


@dataclasses.dataclass(frozen=True)
class Usage:
    vcpus: int
    memory_mb: int
    disk_gb: int


# -1: no migration to leave out (ids start at 1).
NO_MIGRATION = -1


@functools.cache
def _placed_on_statement() -> sa.CompoundSelect:
    """placed_on's query, built once: building it cost more CPU than running
    it, and it runs for every request and every migration's precheck."""
    def totals():
        return (sa.func.coalesce(sa.func.sum(Instance.vcpus), 0), sa.func.coalesce(sa.func.sum(Instance.memory_mb), 0),
                sa.func.coalesce(sa.func.sum(Instance.disk_gb), 0))

    host = sa.bindparam("host")
    resident = sa.select(*totals()).where(Instance.host == host,
                                          Instance.state != InstanceState.DELETED.value)
    incoming = (sa.select(*totals()).select_from(Migration)
                .join(Instance, Instance.uuid == Migration.instance_uuid)
                .where(Migration.dest_host == host, unfinished(Migration.status), Instance.host != host,
                       Migration.id != sa.bindparam("exclude")))
    return sa.union_all(resident, incoming)


def placed_on(session: Session, host: str, exclude_migration: int | None = None) -> Usage:
    """What the inventory places on a host: its instances plus unfinished
    incoming migrations (which will land there). One round trip."""
    exclude = NO_MIGRATION if exclude_migration is None else exclude_migration
    rows = session.execute(_placed_on_statement(), {"host": host, "exclude": exclude}).all()
    return Usage(*(sum(row[i] for row in rows) for i in range(3)))


@functools.cache
def _other_migration_statement() -> sa.Select:
    """An unfinished migration of the instance other than the given one (built once)."""
    return unfinished_migrations().where(Migration.instance_uuid == sa.bindparam("instance"),
                                         Migration.id != sa.bindparam("exclude"))


def check_migration(session: Session, drivers: DriverRegistry, instance_ref: str, source: str, dest: str,
                    migration_id: int | None = None, report: Callable[[str], None] | None = None,
                    copy_storage: str = "off") -> Instance:
    """Raise a precise LivemigError unless the migration may start; returns
    the instance. `report` is told, per disk, what was decided about it
    (shared, network or copied, under `copy_storage`)."""
    if source == dest:
        raise InvalidInput(f"source and destination are the same host ({source})")
    src, dst = get_hosts(session, source, dest)
    instance = find_instance(session, instance_ref)
    if instance.host != source:
        raise PrecheckFailed(f"instance {instance.name} runs on {instance.host or 'no host'}, not on {source}")
    if instance.state != InstanceState.RUNNING.value:
        raise PrecheckFailed(f"instance {instance.name} is {instance.state}, not running")
    for host in (src, dst):
        if not host.enabled:
            reason = f" ({host.disabled_reason})" if host.disabled_reason else ""
            raise HostDisabled(f"host {host.name} is disabled{reason}")
    if dst.maintenance:
        # The scheduler's maintenance filter, for a destination named by the
        # caller or planned before the host went into maintenance: a host
        # being drained takes no new placements (its source role is fine).
        reason = f" ({dst.maintenance_reason})" if dst.maintenance_reason else ""
        raise HostInMaintenance(f"host {dst.name} is in maintenance{reason}: no new placements")
    if dst.standby:
        reason = f" ({dst.standby_reason})" if dst.standby_reason else ""
        raise HostInStandby(f"host {dst.name} is in standby{reason}: no placements until `livemig host wake "
                            f"{dst.name}`")
    if src.zone != dst.zone:
        raise PrecheckFailed(f"hosts {src.name} ({src.zone}) and {dst.name} ({dst.zone}) are in different zones")
    other = session.scalars(_other_migration_statement(),
                            {"instance": instance.uuid,
                             "exclude": NO_MIGRATION if migration_id is None else migration_id}).first()
    if other is not None:
        raise Conflict(f"instance {instance.name} is already in migration {other.id} ({other.status})")
    src_driver = drivers.for_uri(src.uri)
    dst_driver = drivers.for_uri(dst.uri)
    src_facts = _facts(src_driver, src)
    dst_facts = _facts(dst_driver, dst)
    domain = src_driver.find_domain(src.uri, instance.uuid)
    if domain is None or not domain.running:
        state = domain.state.value if domain else "absent"
        raise InstanceNotOnSource(f"instance {instance.name} is not running on {source} (hypervisor says: {state})")
    verdicts = judge_disks(domain.disks, src, dst, copy_storage)
    if report is not None:
        for verdict in verdicts:
            report((f"may migrate ({verdict.how}): " if verdict.may_migrate else "refused: ") + verdict.reason)
    refused = refusal(verdicts)
    if refused is not None:
        raise PrecheckFailed(refused)
    _check_capacity(session, dst, dst_facts.vcpus, dst_facts.memory_mb, dst_facts.disk_gb, instance, migration_id)
    _check_anti_affinity(session, dst, instance, migration_id)
    compatible, why = dst_driver.cpu_compatible(src.uri, dst.uri, instance.uuid)
    if not compatible:
        raise CpuIncompatible(f"{dest} cannot run the CPU of instance {instance.name}: {why}")
    if dst_facts.hypervisor_version < src_facts.hypervisor_version:
        raise PrecheckFailed(
            f"{dest}'s hypervisor ({dst_facts.hypervisor_version}) is older than {source}'s "
            f"({src_facts.hypervisor_version})")
    return instance


def _facts(driver, host: Host):
    try:
        return driver.host_facts(host.uri)
    except HostUnreachable as exc:
        raise HostUnreachable(f"host {host.name} is unreachable: {exc}") from None


def _check_anti_affinity(session: Session, dst: Host, instance: Instance, migration_id: int | None) -> None:
    """The scheduler's anti-affinity filter, for a destination named by the
    caller or planned earlier: no other instance of the group is on the
    host or on its way there (an unfinished incoming migration)."""
    if not instance.group:
        return
    exclude = NO_MIGRATION if migration_id is None else migration_id
    resident = sa.select(Instance.name).where(Instance.host == dst.name, Instance.group == instance.group,
                                              Instance.uuid != instance.uuid,
                                              Instance.state != InstanceState.DELETED.value)
    incoming = (sa.select(Instance.name).select_from(Migration)
                .join(Instance, Instance.uuid == Migration.instance_uuid)
                .where(Migration.dest_host == dst.name, unfinished(Migration.status), Migration.id != exclude,
                       Instance.group == instance.group, Instance.uuid != instance.uuid))
    other = session.scalars(sa.union_all(resident, incoming).limit(1)).first()
    if other is not None:
        raise PrecheckFailed(f"{dst.name} already has {other} of group {instance.group}: instances of one group "
                             f"never share a host (anti-affinity)")


def _check_capacity(session: Session, dst: Host, vcpus: int, memory_mb: int, disk_gb: int, instance: Instance,
                    migration_id: int | None) -> None:
    used = placed_on(session, dst.name, exclude_migration=migration_id)
    limits = (
        ("vcpus", vcpus * dst.cpu_allocation_ratio, used.vcpus, instance.vcpus),
        ("memory MB", memory_mb * dst.ram_allocation_ratio, used.memory_mb, instance.memory_mb),
        ("disk GB", disk_gb * dst.disk_allocation_ratio, used.disk_gb, instance.disk_gb),
    )
    for what, capacity, in_use, needed in limits:
        if in_use + needed > capacity:
            raise InsufficientCapacity(
                f"{dst.name} has not enough room: {what} needed {needed}, free {max(0, capacity - in_use):g}")
