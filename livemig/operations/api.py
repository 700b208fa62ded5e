"""The library entry points of fleet operations (re-exported from livemig):
drain_host, undrain_host, rebalance_fleet, consolidate_fleet, wake_host,
list_operations, show_operation, abort_operation, resume_operation. Each
returns the operation's view (operations/views.py).

Without ZooKeeper an operation runs in the calling process, and
`resume_operation` continues one whose process died. With ZooKeeper it is a
job on the board that conductors run (see operations/jobs.py)."""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Iterable, Mapping

import sqlalchemy as sa

from livemig import input_bounds
from livemig.config import Settings, check_migration_options
from livemig.policies import checked_policy
from livemig.context import RequestContext
from livemig.errors import Conflict, InvalidInput, QueueTimeout
from livemig.operations.claims import OperationEnded
from livemig.operations.records import (
    add_operation_event, create_operation, get_operation, operation_moves, set_operation_status,
)
from livemig.operations.states import MoveStatus, OperationKind, OperationStatus
from livemig.operations.views import MoveView, OperationView, UndrainView
from livemig.persistence.inventory import get_host
from livemig.persistence.models import Host, Migration, Operation, OperationEvent, utcnow
from livemig.planning.model import REBALANCE_MAX_MOVES, REBALANCE_MIN_GAIN, REBALANCE_THRESHOLD
from livemig.services import Services
from livemig.views import HostView

OperationProgress = Callable[[OperationView], None]

_UNFINISHED = [s.value for s in OperationStatus if not s.finished]


def _services(settings: Settings | None) -> Services:
    from livemig import api

    return api._services(settings)


# -- drain / undrain ---------------------------------------------------------------------------------

def drain_host(context: RequestContext, host: str, *, to: Iterable[str] = (), parallel: int | None = None,
               reason: str | None = None, dry_run: bool = False, wait: bool = True, weigher: str = "spread",
               options: Mapping[str, object] | None = None, settings: Settings | None = None,
               progress: OperationProgress | None = None, policy: str | None = None) -> OperationView:
    """Empty HOST: put it in maintenance (no new placements), plan a
    destination for each of its instances (spread, largest first, `to`
    limiting the destinations) and move them as live migrations, at most
    `parallel` at once and within every host's limit. A failed move is
    re-planned on a host not yet tried. Ends `completed` when HOST is empty,
    else `partial` (each instance that stayed, and why; HOST stays in
    maintenance). `dry_run`: the plan only, nothing changed. `wait=False`
    (ZooKeeper only): return once the operation is posted. `policy`: the
    migration policy of every move (default: each instance's by the rules),
    `options` over it."""
    context.require_admin("draining a host")
    to = list(dict.fromkeys(to))
    arguments = _checked_drain_arguments(host, to, parallel, weigher, options, reason)
    arguments["policy"] = checked_policy(policy)
    services = _services(settings)
    if not wait and not services.settings.zookeeper_hosts:
        raise InvalidInput("--no-wait needs ZooKeeper (conductors run the operation); without it the operation "
                           "runs in this process")
    with services.db.reading() as session:
        for name in [host, *to]:
            get_host(session, name)
        if not dry_run:
            _refuse_second_operation(session, host)
    if dry_run:
        return _drain_dry_run(services, context, host, arguments)
    operation_id = _record_operation(services, context, OperationKind.DRAIN, host, arguments,
                                     maintenance=reason or f"drain requested by {context.user}")
    return _run(services, operation_id, wait, progress)


def _checked_drain_arguments(host: str, to: list[str], parallel: int | None, weigher: str,
                             options: Mapping[str, object] | None, reason: str | None) -> dict:
    if parallel is not None and parallel < 1:
        raise InvalidInput(f"--parallel must be at least 1 (got {parallel})")
    if host in to:
        raise InvalidInput(f"--to {host}: the host being drained cannot be a destination")
    if weigher not in ("spread", "pack"):
        raise InvalidInput(f"unknown weigher {weigher!r} (spread or pack)")
    return {"to": to, "parallel": parallel, "weigher": weigher, "reason": reason,
            "migration_options": check_migration_options(dict(options or {}))}


def _lock_host(session, host: str) -> None:
    """Hold the host's row until the transaction ends (a no-op UPDATE: the
    row's lock on PostgreSQL, the database's on SQLite), so that checking
    for another operation and recording this one are one step: two drains
    started together cannot both pass the check."""
    from livemig.persistence.models import Host

    session.execute(sa.update(Host).where(Host.name == host).values(name=Host.name))


def _refuse_second_operation(session, host: str) -> None:
    running = session.scalar(sa.select(Operation.id).where(Operation.host == host,
                                                           Operation.status.in_(_UNFINISHED)).limit(1))
    if running is not None:
        raise Conflict(f"operation {running} on host {host} is not finished (`livemig operation show {running}`)")


def _drain_dry_run(services: Services, context: RequestContext, host: str, arguments: dict) -> OperationView:
    from livemig.operations.planning import plan_drain
    from livemig.scheduler.inventory import snapshot

    with services.db.reading() as session:
        placements = plan_drain(snapshot(session), host, arguments["to"] or None, arguments["weigher"])
    moves = [MoveView(i, p.instance_uuid, p.instance_name, p.source, p.dest,
                      MoveStatus.PLANNED.value if p.dest else MoveStatus.SKIPPED.value, None, None, 0.0, p.reason)
             for i, p in enumerate(placements)]
    return OperationView.dry_run(OperationKind.DRAIN.value, host, context.user, arguments, moves)


def undrain_host(context: RequestContext, host: str, *, return_instances: bool = False,
                 parallel: int | None = None, wait: bool = True, dry_run: bool = False,
                 settings: Settings | None = None, progress: OperationProgress | None = None) -> UndrainView:
    """Take HOST out of maintenance; with `return_instances`, move the
    instances its last drain moved (those still where the drain put them)
    back to it, as an operation of their own. `dry_run`: the return's plan
    (as if HOST were out of maintenance) only, nothing changed."""
    context.require_admin("undraining a host")
    if parallel is not None and parallel < 1:
        raise InvalidInput(f"--parallel must be at least 1 (got {parallel})")
    services = _services(settings)
    if return_instances and not wait and not services.settings.zookeeper_hosts:
        raise InvalidInput("--no-wait needs ZooKeeper (conductors run the operation)")
    if dry_run:
        return _undrain_dry_run(services, context, host, return_instances, parallel)
    with services.db.session() as session:
        record = get_host(session, host)
        _lock_host(session, host)
        _refuse_second_operation(session, host)
        if not record.maintenance:
            raise InvalidInput(f"host {host} is not in maintenance")
        instances = _drained_instances(session, host) if return_instances else []
        record.maintenance, record.maintenance_reason, record.maintenance_since = False, None, None
        host_view = HostView.of(record)
    if not return_instances:
        return UndrainView(host_view, None)
    arguments = {"instances": instances, "parallel": parallel, "weigher": "spread", "to": [host],
                 "migration_options": {}}
    operation_id = _record_operation(services, context, OperationKind.RETURN, host, arguments, maintenance=None)
    return UndrainView(host_view, _run(services, operation_id, wait, progress))


def _undrain_dry_run(services: Services, context: RequestContext, host: str, return_instances: bool,
                     parallel: int | None) -> UndrainView:
    import dataclasses

    from livemig.operations.planning import plan_return
    from livemig.scheduler.inventory import snapshot

    with services.db.reading() as session:
        record = get_host(session, host)
        _refuse_second_operation(session, host)
        if not record.maintenance:
            raise InvalidInput(f"host {host} is not in maintenance")
        host_view = HostView.of(record)
        if not return_instances:
            return UndrainView(host_view, None)
        instances = _drained_instances(session, host)
        world = snapshot(session)
    # The return is planned once the host is out of maintenance.
    hosts = dict(world.hosts)
    hosts[host] = dataclasses.replace(hosts[host], maintenance=False, maintenance_reason=None)
    placements = plan_return(dataclasses.replace(world, hosts=hosts), host, instances)
    moves = [MoveView(i, p.instance_uuid, p.instance_name, p.source, p.dest,
                      MoveStatus.PLANNED.value if p.dest else MoveStatus.SKIPPED.value, None, None, 0.0, p.reason)
             for i, p in enumerate(placements)]
    arguments = {"instances": instances, "parallel": parallel, "weigher": "spread", "to": [host],
                 "migration_options": {}}
    return UndrainView(host_view, OperationView.dry_run(OperationKind.RETURN.value, host, context.user, arguments,
                                                        moves))


def _drained_instances(session, host: str) -> list[str]:
    """The instances the host's last drain moved that are still where it put them."""
    from livemig.persistence.models import Instance

    drain = session.scalar(sa.select(Operation.id).where(Operation.host == host,
                                                         Operation.kind == OperationKind.DRAIN.value)
                           .order_by(Operation.id.desc()).limit(1))
    if drain is None:
        return []
    found = []
    for move in operation_moves(session, drain):
        instance = session.get(Instance, move.instance_uuid)
        if move.status == MoveStatus.COMPLETED.value and instance is not None and instance.host == move.dest_host:
            found.append(move.instance_uuid)
    return found


def _record_operation(services: Services, context: RequestContext, kind: OperationKind, host: str,
                      arguments: dict, maintenance: str | None) -> int:
    """The operation, its persisted flow and (a drain) its host's maintenance, in one transaction."""
    from livemig.operations.runner import create_operation_logbook

    with services.db.session() as session:
        get_host(session, host)
        _lock_host(session, host)
        _refuse_second_operation(session, host)  # checked before, but not under the lock
        if maintenance is not None:
            record = get_host(session, host)
            if not record.maintenance:
                record.maintenance, record.maintenance_since = True, utcnow()
            record.maintenance_reason = maintenance
        operation = create_operation(session, kind.value, context.user, host, arguments)
        operation.logbook_id, operation.flow_id = create_operation_logbook(services, operation.id,
                                                                           session.connection())
        if maintenance is not None:
            add_operation_event(session, operation.id, "maintenance", f"{host} in maintenance: {maintenance}")
        return operation.id


def _run(services: Services, operation_id: int, wait: bool, progress: OperationProgress | None) -> OperationView:
    """Run the operation here (no ZooKeeper) or post it for the conductors;
    follow it to its end if `wait`."""
    if services.settings.zookeeper_hosts:
        from livemig.operations.jobs import post_operation_job

        post_operation_job(services, operation_id)
        if not wait:
            return show_operation(operation_id, settings=services.settings)
        return _follow(services, operation_id, progress, runner=None, unclaimed_epoch=0)
    from livemig.operations.runner import run_operation

    return _follow(services, operation_id, progress, runner=lambda: run_operation(services, operation_id))


def _follow(services: Services, operation_id: int, progress: OperationProgress | None,
            runner: Callable[[], None] | None, unclaimed_epoch: int | None = None) -> OperationView:
    """Run (if a runner is given) while reporting progress; then the view. A
    posted job (`unclaimed_epoch`: its claim epoch when posted) that no
    conductor claims within the setting's deadline raises QueueTimeout; it
    stays on the board."""
    errors: list[BaseException] = []
    claim_deadline = None
    if runner is None and unclaimed_epoch is not None:
        claim_deadline = time.monotonic() + services.settings.unclaimed_job_timeout_s

    def target() -> None:
        try:
            runner()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    thread = None
    if runner is not None:
        thread = threading.Thread(target=target, name=f"operation-{operation_id}", daemon=True)
        thread.start()
    while True:
        if thread is not None:
            thread.join(0.5)
        else:
            time.sleep(0.5)
        # Whether the runner ended, asked before the view is read: a view read
        # first could predate the outcome the runner recorded just after.
        ended = thread is not None and not thread.is_alive()
        view = show_operation(operation_id, settings=services.settings)
        if progress is not None:
            progress(view)
        if ended:
            break
        if thread is None and OperationStatus(view.status).finished:
            break
        if claim_deadline is not None:
            with services.db.reading() as session:
                epoch = get_operation(session, operation_id).claim_epoch
            if epoch != unclaimed_epoch:
                claim_deadline = None
            elif time.monotonic() >= claim_deadline:
                timeout = services.settings.unclaimed_job_timeout_s
                raise QueueTimeout(f"no conductor has claimed operation {operation_id} in {timeout:g} s; is one "
                                   f"running? (it stays on the board; `livemig operation abort {operation_id}` "
                                   f"cancels it)")
    if errors and not OperationStatus(view.status).finished:
        raise errors[0]
    return view


# -- rebalance / consolidate: a planner's plan, run wave after wave ------------------------------------

METRICS = ("cpu", "memory", "both")
DEFAULT_WINDOW_S = 3600.0
# What a consolidation packs by: allocations only, or allocations and the
# measured peak load (kept `headroom` below each host's physical size).
CONSOLIDATE_BY = ("measured", "allocated")


def rebalance_fleet(context: RequestContext, *, metric: str = "cpu", threshold: float = REBALANCE_THRESHOLD,
                    min_gain: float = REBALANCE_MIN_GAIN, max_moves: int | None = None,
                    window_s: float = DEFAULT_WINDOW_S, parallel: int | None = None, policy: str | None = None,
                    dry_run: bool = False, wait: bool = True, plan: Mapping[str, Any] | None = None,
                    settings: Settings | None = None, progress: OperationProgress | None = None) -> OperationView:
    """Spread the load: move instances off the busiest hosts until the
    imbalance (the standard deviation of per-host normalised `metric` load,
    measured over `window_s`, by allocation where nothing was sampled) is
    below `threshold`, each move gaining at least `min_gain`, at most
    `max_moves` (None: the planner's default). The plan (`dry_run`: only the
    plan, nothing changed) runs wave after wave as an operation, at most
    `parallel` moves at once, each with migration policy `policy` (default:
    each instance's, by the rules); `plan`: the document of an earlier dry
    run, run as it is (what was shown is what runs)."""
    context.require_admin("rebalancing the fleet")
    if metric not in METRICS:
        raise InvalidInput(f"unknown metric {metric!r} ({', '.join(METRICS)})")
    arguments = {"metric": metric, "threshold": _non_negative("--threshold", threshold),
                 "min_gain": _non_negative("--min-gain", min_gain),
                 "max_moves": REBALANCE_MAX_MOVES if max_moves is None else _max_moves(max_moves),
                 "window_s": _window(window_s), "parallel": _parallel(parallel), "policy": checked_policy(policy)}
    return _planned_operation(context, OperationKind.REBALANCE, arguments, dry_run, wait, plan, settings, progress)


def consolidate_fleet(context: RequestContext, *, headroom: float = 0.2, by: str = "measured",
                      max_moves: int | None = None, window_s: float = DEFAULT_WINDOW_S, parallel: int | None = None,
                      policy: str | None = None, dry_run: bool = False, wait: bool = True,
                      plan: Mapping[str, Any] | None = None, settings: Settings | None = None,
                      progress: OperationProgress | None = None) -> OperationView:
    """Pack instances onto as few hosts as possible, then put each host
    emptied in standby. `by="measured"`: allocations, and the measured peak
    load over `window_s` within (1 - `headroom`) of each host's physical
    size; `by="allocated"`: allocations only (the headroom does not apply).
    Otherwise as rebalance_fleet."""
    context.require_admin("consolidating the fleet")
    if not (isinstance(headroom, (int, float)) and 0.0 <= headroom < 1.0):
        raise InvalidInput(f"--headroom must be at least 0% and below 100% (got {headroom!r} as a fraction)")
    if by not in CONSOLIDATE_BY:
        raise InvalidInput(f"unknown --by {by!r} ({', '.join(CONSOLIDATE_BY)})")
    arguments = {"headroom": float(headroom), "by": by, "max_moves": _max_moves(max_moves),
                 "window_s": _window(window_s), "parallel": _parallel(parallel), "policy": checked_policy(policy)}
    return _planned_operation(context, OperationKind.CONSOLIDATE, arguments, dry_run, wait, plan, settings,
                              progress)


def wake_host(context: RequestContext, host: str, settings: Settings | None = None) -> HostView:
    """Bring host HOST back from standby: it takes placements again."""
    from livemig.operations.standby import wake

    context.require_admin("waking a host")
    with _services(settings).db.session() as session:
        return HostView.of(wake(session, host))


def _non_negative(option: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise InvalidInput(f"{option} must be a number at least 0 (got {value!r})")
    return float(value)


def _max_moves(value: int | None) -> int | None:
    # 0 is allowed: the plan's figures, and no move.
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise InvalidInput(f"--max-moves must be a whole number at least 0 (got {value!r})")
    return value


def _parallel(value: int | None) -> int | None:
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise InvalidInput(f"--parallel must be at least 1 (got {value!r})")
    return value


def _window(value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InvalidInput(f"--window must be a positive duration (got {value!r})")
    return float(value)


def _planned_operation(context: RequestContext, kind: OperationKind, arguments: dict, dry_run: bool, wait: bool,
                       plan: Mapping[str, Any] | None, settings: Settings | None,
                       progress: OperationProgress | None) -> OperationView:
    from livemig.operations.fleet_plans import make_plan

    services = _services(settings)
    if not wait and not services.settings.zookeeper_hosts:
        raise InvalidInput("--no-wait needs ZooKeeper (conductors run the operation); without it the operation "
                           "runs in this process")
    if plan is not None and plan.get("kind") != kind.value:
        raise InvalidInput(f"the plan given is a {plan.get('kind')!r} plan, not a {kind.value} plan")
    with services.db.reading() as session:
        if not dry_run:
            _refuse_second_fleet_operation(session)
        if plan is None:
            plan = make_plan(session, kind, arguments, services.settings)
    plan = dict(plan)
    if dry_run:
        moves = [MoveView.planned(i, m) for i, m in enumerate(plan["moves"])]
        return OperationView.dry_run(kind.value, None, context.user, arguments, moves, plan)
    from livemig.operations.runner import create_operation_logbook

    with services.db.session() as session:
        _refuse_second_fleet_operation(session)
        operation = create_operation(session, kind.value, context.user, None, arguments)
        operation.plan = plan
        operation.logbook_id, operation.flow_id = create_operation_logbook(services, operation.id,
                                                                           session.connection())
        operation_id = operation.id
    return _run(services, operation_id, wait, progress)


def _refuse_second_fleet_operation(session) -> None:
    """One rebalance or consolidation at a time: each plans the whole fleet
    as it is, and a second would plan against moves the first has not made."""
    running = session.scalar(sa.select(Operation.id).where(
        Operation.kind.in_([k.value for k in OperationKind if k.planned]),
        Operation.status.in_(_UNFINISHED)).limit(1))
    if running is not None:
        raise Conflict(f"operation {running} (a fleet-wide plan) is not finished "
                       f"(`livemig operation show {running}`)")


# -- list / show / abort / resume ----------------------------------------------------------------------

def list_operations(status: str | None = None, kind: str | None = None, limit: int = 50,
                    settings: Settings | None = None) -> list[OperationView]:
    if status is not None and status not in {s.value for s in OperationStatus}:
        raise InvalidInput(f"unknown operation status {status!r}")
    if kind is not None and kind not in {k.value for k in OperationKind}:
        raise InvalidInput(f"unknown operation kind {kind!r} ({', '.join(k.value for k in OperationKind)})")
    input_bounds.whole_number_in("the limit", limit, input_bounds.LIST_LIMIT)
    with _services(settings).db.reading() as session:
        query = sa.select(Operation).order_by(Operation.id.desc()).limit(limit)
        if status:
            query = query.where(Operation.status == status)
        if kind:
            query = query.where(Operation.kind == kind)
        views = []
        for operation in session.scalars(query):
            moves = [MoveView.of(m) for m in operation_moves(session, operation.id)]
            views.append(OperationView.of(operation, moves))
        return views


def show_operation(operation_id: int, settings: Settings | None = None) -> OperationView:
    """The operation with its plan, each move's status, progress and reason, and its event trail."""
    with _services(settings).db.reading() as session:
        operation = get_operation(session, operation_id)
        moves = operation_moves(session, operation_id)
        ids = [m.migration_id for m in moves if m.migration_id is not None]
        migrations = {m.id: m for m in session.scalars(sa.select(Migration).where(Migration.id.in_(ids)))} \
            if ids else {}
        events = session.scalars(sa.select(OperationEvent).where(OperationEvent.operation_id == operation_id)
                                 .order_by(OperationEvent.id))
        planned = [m.get("dest") for m in (operation.plan or {}).get("moves", [])]
        return OperationView.of(operation, [MoveView.of(m, migrations.get(m.migration_id),
                                                        planned[m.position] if m.position < len(planned) else None)
                                            for m in moves], list(events))


def abort_operation(context: RequestContext, operation_id: int, now: bool = False,
                    settings: Settings | None = None) -> OperationView:
    """Cancel the moves not started; moves in flight finish, or (`now`) are
    aborted (their VMs stay on their sources). The operation ends `aborted`."""
    context.require_admin("aborting an operation")
    services = _services(settings)
    with services.db.session() as session:
        operation = get_operation(session, operation_id)
        if OperationStatus(operation.status).finished:
            raise OperationEnded(f"operation {operation_id} already ended ({operation.status})")
        operation.abort_requested = True
        operation.abort_now = operation.abort_now or now
        add_operation_event(session, operation_id, "abort",
                            f"requested by {context.user}" + (" (--now: moves in flight too)" if now else ""))
        set_operation_status(session, operation_id, OperationStatus.ABORTING)
    return show_operation(operation_id, settings=services.settings)


def resume_operation(context: RequestContext, operation_id: int, *, wait: bool = True,
                     settings: Settings | None = None, progress: OperationProgress | None = None) -> OperationView:
    """Continue an operation whose runner died, from its persisted flow: moves
    already submitted are followed, never submitted again."""
    context.require_admin("resuming an operation")
    services = _services(settings)
    with services.db.reading() as session:
        operation = get_operation(session, operation_id)
        if OperationStatus(operation.status).finished:
            raise OperationEnded(f"operation {operation_id} already ended ({operation.status})")
    if services.settings.zookeeper_hosts:
        from livemig.operations.jobs import resume_operation_job

        with services.db.reading() as session:
            epoch = get_operation(session, operation_id).claim_epoch
        posted = resume_operation_job(services, operation_id)
        if not wait:
            return show_operation(operation_id, settings=services.settings)
        # A job still on the board may be running, however long it takes.
        return _follow(services, operation_id, progress, runner=None, unclaimed_epoch=epoch if posted else None)
    from livemig.operations.runner import run_operation

    return _follow(services, operation_id, progress,
                   runner=lambda: run_operation(services, operation_id, resumed=True))
