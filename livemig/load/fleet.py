"""The `Fleet` a planner reads (livemig.planning.model), built from the
inventory and the load samples.

Hosts and instances come from the scheduler's snapshot (the same accounting
the scheduler uses); an instance's load is the mean and the peak of its
samples over the window, or its allocation when it has none there
(`measured=False`), so a fleet that was never sampled still plans, by
allocation."""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from livemig.config import Settings
from livemig.errors import InvalidInput
from livemig.persistence.inventory import unfinished
from livemig.persistence.models import Host, Instance, LoadSample, Migration, utcnow
from livemig.planning.model import Fleet, HostCapacity, InstanceDemand
from livemig.scheduler.filters import (
    CpuModelFilter, Filter, HypervisorVersionFilter, NetworksFilter, Request, StorageFilter, ZoneFilter)
from livemig.scheduler.inventory import snapshot
from livemig.scheduler.state import HostState, InstanceRequest, Snapshot
from livemig.states import InstanceState

# Where an instance's load comes from: its samples (the allocation when it
# has none in the window), or its allocation only.
MEASURED = "measured"
ALLOCATED = "allocated"
METRIC_SOURCES = (MEASURED, ALLOCATED)

# The scheduler's filters that depend on the host and the instance only, not
# on what else is placed: they decide `allowed_hosts`. Capacity,
# anti-affinity, migration slots and placeability are the planner's to
# count as its plan goes.
STATIC_FILTERS: tuple[Filter, ...] = (
    ZoneFilter(), CpuModelFilter(), HypervisorVersionFilter(), NetworksFilter(), StorageFilter())

# A live migration moves a running or paused guest; any other is left where it is.
MOVABLE_STATES = frozenset({InstanceState.RUNNING.value, InstanceState.PAUSED.value})


@dataclasses.dataclass(frozen=True)
class Load:
    """Mean and peak over a window: CPU in cores, memory in MiB."""

    cpu_mean: float
    cpu_peak: float
    memory_mean_mb: float
    memory_peak_mb: float
    samples: int


def window_start(window_s: float, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    if not window_s > 0:
        raise InvalidInput(f"the load window must be a positive number of seconds, not {window_s!r}")
    end = now or utcnow()
    return end - dt.timedelta(seconds=window_s), end


def _loads(session: Session, key: sa.ColumnElement, condition: sa.ColumnElement, since: dt.datetime,
           until: dt.datetime) -> dict[str, Load]:
    cores = LoadSample.cpu * LoadSample.host_cpus
    rows = session.execute(
        sa.select(key, sa.func.avg(cores), sa.func.max(cores), sa.func.avg(LoadSample.memory_used_mb),
                  sa.func.max(LoadSample.memory_used_mb), sa.func.count())
        .where(condition, LoadSample.at > since, LoadSample.at <= until)
        .group_by(key))
    return {name: Load(float(cpu_mean), float(cpu_peak), float(mem_mean), float(mem_peak), int(count))
            for name, cpu_mean, cpu_peak, mem_mean, mem_peak, count in rows}


def instance_loads(session: Session, since: dt.datetime, until: dt.datetime) -> dict[str, Load]:
    """Each sampled instance's load over (since, until], by uuid."""
    return _loads(session, LoadSample.instance_uuid, LoadSample.instance_uuid.is_not(None), since, until)


def host_loads(session: Session, since: dt.datetime, until: dt.datetime) -> dict[str, Load]:
    """Each sampled host's own load (all its guests and itself) over (since, until], by name."""
    return _loads(session, LoadSample.host, LoadSample.instance_uuid.is_(None), since, until)


def placeable(host: Host) -> bool:
    """Whether the host takes new placements. `standby` is read if the
    inventory has it (fleet operations add it), so this stays one rule."""
    return bool(host.enabled and not host.maintenance and not getattr(host, "standby", False))


def allowed_hosts_of(snap: Snapshot, candidates: list[HostState]) -> Callable[[InstanceRequest], frozenset[str] | None]:
    """A function: the hosts among `candidates` (and its own) an instance may
    go to, None when every candidate may take it. Memoised by what the static
    filters read, so a fleet of many alike instances asks them once per kind
    of instance and host rather than per instance."""
    memo: dict[tuple, frozenset[str] | None] = {}

    def allowed(instance: InstanceRequest) -> frozenset[str] | None:
        key = (instance.host, instance.cpu_model, instance.networks, instance.disks)
        if key not in memo:
            request = Request(instance=instance, source=snap.hosts.get(instance.host or ""), ignore_slots=True)
            ok = frozenset(h.name for h in candidates
                           if h.name == instance.host or all(f.why_not(h, request) is None for f in STATIC_FILTERS))
            memo[key] = None if len(ok) == len(candidates) else ok
        return memo[key]

    return allowed


def build_fleet(session: Session, *, window_s: float, now: dt.datetime | None = None,
                metric_source: str = MEASURED, settings: Settings | None = None,
                with_allowed_hosts: bool = True, hosts: Iterable[str] | None = None) -> Fleet:
    """The fleet as a planner sees it: every host (or those named) with its
    physical and allocatable capacity, and every placed instance with its
    allocation and its load over the `window_s` seconds before `now`.

    An instance whose migration is unfinished, or that is neither running
    nor paused, is not movable. `allowed_hosts` is decided by the
    scheduler's static filters (zone, CPU model, hypervisor version,
    networks, storage) unless `with_allowed_hosts` is False (then None:
    every host, leaving those checks to the moves' prechecks and scheduler)."""
    if metric_source not in METRIC_SOURCES:
        raise InvalidInput(f"metric source must be one of {', '.join(METRIC_SOURCES)}, not {metric_source!r}")
    since, until = window_start(window_s, now)
    snap = snapshot(session)
    wanted = None if hosts is None else set(hosts)
    rows = {h.name: h for h in session.scalars(sa.select(Host).order_by(Host.name))
            if wanted is None or h.name in wanted}
    idle = settings.host_idle_watts if settings is not None else HostCapacity.idle_watts
    peak = settings.host_peak_watts if settings is not None else HostCapacity.peak_watts
    capacities = {
        name: HostCapacity(
            name=name, zone=host.zone, cpus=float(host.vcpus), memory_mb=float(host.memory_mb),
            alloc_vcpus=host.vcpus * host.cpu_allocation_ratio,
            alloc_memory_mb=host.memory_mb * host.ram_allocation_ratio,
            max_migrations=host.max_concurrent_migrations, placeable=placeable(host),
            idle_watts=idle, peak_watts=peak)
        for name, host in rows.items()}
    loads = instance_loads(session, since, until) if metric_source == MEASURED else {}
    migrating = set(session.scalars(sa.select(Migration.instance_uuid).where(unfinished(Migration.status))))
    states = {uuid: state for uuid, state in session.execute(
        sa.select(Instance.uuid, Instance.state).where(Instance.host.in_(list(rows))))}
    allowed = allowed_hosts_of(snap, [snap.hosts[name] for name in rows if capacities[name].placeable])
    demands: dict[str, InstanceDemand] = {}
    for uuid, inst in snap.instances.items():
        if inst.host not in rows:
            continue
        movable = uuid not in migrating and states.get(uuid) in MOVABLE_STATES
        demands[uuid] = _demand(inst, loads.get(uuid), movable=movable,
                                allowed=allowed(inst) if with_allowed_hosts else None)
    return Fleet(hosts=capacities, instances=demands)


def _demand(inst: InstanceRequest, load: Load | None, *, movable: bool,
            allowed: frozenset[str] | None) -> InstanceDemand:
    if load is None:
        cpu_mean = cpu_peak = float(inst.vcpus)
        memory_mean = memory_peak = float(inst.memory_mb)
    else:
        cpu_mean, cpu_peak = load.cpu_mean, load.cpu_peak
        memory_mean, memory_peak = load.memory_mean_mb, load.memory_peak_mb
    return InstanceDemand(
        uuid=inst.uuid, name=inst.name, host=inst.host or "", vcpus=inst.vcpus, memory_mb=inst.memory_mb,
        cpu_mean=cpu_mean, cpu_peak=cpu_peak, memory_used_mean_mb=memory_mean,
        memory_used_peak_mb=memory_peak, measured=load is not None, group=inst.group,
        allowed_hosts=allowed, movable=movable)

