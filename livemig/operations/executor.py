"""The loop that runs an operation's moves: it submits planned moves as
ordinary livemig migrations (each with its own flow, reservations and host
limits), follows them, re-plans a failed one on a host not yet tried, and
returns when no move is planned or in flight.

A planner's operation (rebalance, consolidate) runs its plan as made: a
move is submitted only once every move of the waves before it has ended,
and a move that fails or is refused fails with its reason (re-planning it
elsewhere would undo the plan); a later move that counted on it is checked
by its own precheck when its turn comes. A consolidation puts each host it
emptied in standby once the moves from it have ended (livemig.operations.standby).

Everything it knows is in the database, so that a runner killed at any
point and started again (`operation resume`, another conductor) continues
where it was: a move's migration is recorded in the transaction that marks
the move submitted (and a planned move first looks for a migration of its
own that a crash left unmarked); a move whose VM is no longer on its source
is never submitted; migrations in flight are followed, not submitted again.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Iterable, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from livemig.context import RequestContext
from livemig.errors import (
    Conflict, HostUnreachable, InstanceNotOnSource, LivemigError, PrecheckFailed, ServiceUnavailable,
)
from livemig.operations.claims import OperationFenced, check_operation_claim
from livemig.operations.planning import replan_move
from livemig.operations.records import (
    add_operation_event, get_operation, hosts_tried, move_migrations, operation_moves,
)
from livemig.operations.standby import standby_emptied_hosts
from livemig.operations.states import MoveStatus, OperationKind
from livemig.persistence.inventory import unfinished_migrations
from livemig.persistence.models import Host, Instance, Migration, OperationMove
from livemig.scheduler.state import Snapshot
from livemig.services import Services
from livemig.states import InstanceState, MigrationStatus

LOG = logging.getLogger("livemig.operations")

# How long the loop rides out a database or ZooKeeper that does not answer.
TRANSIENT_PATIENCE_S = 120.0

# How many migrations one move may submit (its first and the re-plans after
# failures) when the settings have no `max_retries`.
DEFAULT_MAX_RETRIES = 3

_MOVE_OF_MIGRATION = {
    MigrationStatus.QUEUED: MoveStatus.SUBMITTED,
    MigrationStatus.PREPARING: MoveStatus.RUNNING,
    MigrationStatus.RUNNING: MoveStatus.RUNNING,
    MigrationStatus.POST_MIGRATING: MoveStatus.RUNNING,
}


class MoveRunner(Protocol):
    """Who runs the moves' migrations: this process (no ZooKeeper) or the
    conductors (a job per migration on the board)."""

    def submitted(self, migration_id: int) -> None: ...

    def follow(self, migration_ids: Iterable[int]) -> None: ...

    def wait(self, timeout: float) -> None:
        """Until a move's migration may have ended, at most `timeout` seconds."""

    def close(self) -> None: ...


class LocalMoveRunner:
    """Runs each move's migration flow in a thread of this process. A
    migration left mid-flight by a killed runner is resumed from its
    persisted flow (its own run lock keeps two processes from running it)."""

    RETRY_AFTER_S = 1.0

    def __init__(self, services: Services):
        self._services = services
        self._threads: dict[int, threading.Thread] = {}
        self._not_before: dict[int, float] = {}
        self._ended = threading.Event()  # a migration thread ended since the last wait

    def submitted(self, migration_id: int) -> None:
        self._start(migration_id, fresh=True)

    def follow(self, migration_ids: Iterable[int]) -> None:
        now = time.monotonic()
        for migration_id in migration_ids:
            thread = self._threads.get(migration_id)
            if thread is not None and thread.is_alive():
                continue
            if self._not_before.get(migration_id, 0.0) > now:
                continue
            self._start(migration_id, fresh=False)

    def _start(self, migration_id: int, fresh: bool) -> None:
        thread = threading.Thread(target=self._run, args=(migration_id, fresh), daemon=True,
                                  name=f"operation-move-{migration_id}")
        self._threads[migration_id] = thread
        thread.start()

    def _run(self, migration_id: int, fresh: bool) -> None:
        from livemig.runner import resume_migration, run_migration

        try:
            if fresh:
                run_migration(self._services, migration_id)
            else:
                resume_migration(self._services, migration_id)
        except Conflict as exc:
            # Run by another process, or already ended: followed from its row.
            LOG.debug("migration %s: %s", migration_id, exc)
            self._not_before[migration_id] = time.monotonic() + self.RETRY_AFTER_S
        except Exception as exc:  # noqa: BLE001 - the row says how it ended; logged here
            LOG.warning("migration %s: its runner stopped: %s: %s", migration_id, type(exc).__name__, exc)
            self._not_before[migration_id] = time.monotonic() + self.RETRY_AFTER_S
        finally:
            self._ended.set()

    def wait(self, timeout: float) -> None:
        self._ended.wait(timeout)
        self._ended.clear()

    def close(self) -> None:
        for thread in list(self._threads.values()):
            thread.join()


# The loop looks again at once when something changed; otherwise less and
# less often, up to this (it wakes as soon as a local migration ends): a
# loop looking 20 times a second at 500 moves took most of the CPU that the
# moves' own flows needed, in the same process.
IDLE_LOOK_S = 1.0


@dataclasses.dataclass
class _Tally:
    planned: int = 0
    in_flight: list[int] = dataclasses.field(default_factory=list)
    changed: bool = False


class MoveExecutor:
    """Submits and follows one operation's moves until none is planned or in flight."""

    def __init__(self, services: Services, operation_id: int, runner: MoveRunner):
        self.services = services
        self.operation_id = operation_id
        self.runner = runner
        self.max_retries = int(getattr(services.settings, "max_retries", DEFAULT_MAX_RETRIES))
        # Destinations whose precheck refused a move at submission (no
        # migration recorded): not tried again by this runner.
        self._refused: dict[int, set[str]] = {}
        self._aborted_in_flight: set[int] = set()
        # Planned moves already checked for a migration a crash left unmarked:
        # this runner's own submissions mark theirs in the same transaction.
        self._looked_for_lost: set[int] = set()
        # Hosts a consolidation emptied whose standby has been decided.
        self._standby_decided: set[str] = set()

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        first = True
        failing_since: float | None = None
        idle = 0.0
        while True:
            try:
                tally = self.step()
                failing_since = None
            except ServiceUnavailable as exc:
                # A database or ZooKeeper blip must not end the operation
                # (`failed` is final): every step is safe to run again.
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > TRANSIENT_PATIENCE_S:
                    raise
                LOG.warning("operation %s: %s; trying again", self.operation_id, exc)
                time.sleep(1.0)
                continue
            if not tally.planned and not tally.in_flight:
                return
            if first or tally.in_flight:
                # After a restart, migrations in flight may have nobody running them.
                self.runner.follow(tally.in_flight)
                first = False
            poll = self.services.settings.poll_interval_s
            idle = poll if tally.changed else min(max(idle, poll) * 2, max(IDLE_LOOK_S, poll))
            self.runner.wait(idle)

    def step(self) -> _Tally:
        """One look at every move: follow the in-flight ones, re-plan the
        failed ones, submit what the limits allow."""
        with self.services.db.reading() as session:
            operation = get_operation(session, self.operation_id)
            abort, abort_now = operation.abort_requested, operation.abort_now
            arguments = dict(operation.arguments or {})
            requested_by = operation.requested_by
            kind = OperationKind(operation.kind)
            emptied = list((operation.plan or {}).get("emptied") or [])
            moves = operation_moves(session, self.operation_id)
            ids = [m.migration_id for m in moves if MoveStatus(m.status).in_flight]
            statuses = dict(session.execute(sa.select(Migration.id, Migration.status)
                                            .where(Migration.id.in_(ids))).all()) if ids else {}
        changed = False
        if abort:
            self._cancel_planned(moves)
            if abort_now:
                self._abort_in_flight(moves, requested_by)
        for move in moves:
            if not MoveStatus(move.status).in_flight:
                continue
            status = MigrationStatus(statuses[move.migration_id])
            # Write only on a change (one read above for every move in flight).
            if status.finished or move.status != _MOVE_OF_MIGRATION[status].value:
                self._follow_move(move, arguments, abort, kind)
                changed = True
        tally = self._submit_planned(arguments, requested_by, abort, kind)
        tally.changed = tally.changed or changed
        if kind is OperationKind.CONSOLIDATE and not abort and set(emptied) - self._standby_decided:
            self._standby_decided |= standby_emptied_hosts(self.services, self.operation_id, emptied,
                                                           self._standby_decided)
        return tally

    # -- following ----------------------------------------------------------------------------------

    def _follow_move(self, move: OperationMove, arguments: dict, abort: bool, kind: OperationKind) -> None:
        with self.services.db.session() as session:
            move = session.get(OperationMove, move.id)
            migration = session.get(Migration, move.migration_id)
            status = MigrationStatus(migration.status)
            if not status.finished:
                new = _MOVE_OF_MIGRATION[status]
                if move.status != new.value:
                    check_operation_claim(session, self.operation_id)
                    move.status = new.value
                return
            check_operation_claim(session, self.operation_id)
            if status is MigrationStatus.COMPLETED:
                move.status = MoveStatus.COMPLETED.value  # a retry's reason stays: how it got there
                move.dest_host = migration.dest_host
                add_operation_event(session, self.operation_id, "move-completed",
                                    f"{move.instance_name}: {move.source_host} -> {migration.dest_host} "
                                    f"(migration {migration.id})")
                return
            why = migration.error_reason or status.value
            if abort:
                move.status, move.reason = MoveStatus.CANCELLED.value, f"aborted: migration {migration.id} {why}"
                add_operation_event(session, self.operation_id, "move-cancelled",
                                    f"{move.instance_name}: {move.reason}")
                return
            if kind.planned:
                self._fail(session, move, f"failed on {migration.dest_host} (migration {migration.id}: {why}); "
                                          f"not re-planned: a {kind.value} runs its plan as made")
                return
            self._replan_or_fail(session, move, migration, why, arguments)

    def _replan_or_fail(self, session: Session, move: OperationMove, migration: Migration, why: str,
                        arguments: dict) -> None:
        """A move whose migration failed: on another host if the VM is intact
        on its source and the move has tries left; else it failed."""
        instance = session.get(Instance, move.instance_uuid)
        failed_on = f"{migration.dest_host} (migration {migration.id}: {why})"
        if MigrationStatus(migration.status) is not MigrationStatus.FAILED or instance is None \
                or instance.host != move.source_host or instance.state != InstanceState.RUNNING.value:
            # An error (where the VM runs was not certain) is not retried: reconcile first.
            where = f"it is {instance.state} on {instance.host}" if instance is not None else "it is gone"
            self._fail(session, move, f"failed on {failed_on}; not retried: {where}")
            return
        migrations = move_migrations(session, self.operation_id, move.instance_uuid)
        if len(migrations) > self.max_retries:
            self._fail(session, move, f"failed on {failed_on}; {len(migrations)} attempts, no retry left")
            return
        tried = hosts_tried(migrations) | self._refused.get(move.id, set())
        selection = replan_move(self._snapshot_with_planned(session, move.id), move.instance_uuid, tried,
                                arguments.get("to") or None, arguments.get("weigher", "spread"))
        if selection.chosen is None:
            self._fail(session, move, f"failed on {failed_on}; {selection.why_none()}")
            return
        move.status, move.dest_host = MoveStatus.PLANNED.value, selection.chosen
        move.reason = f"retry after {failed_on}"
        add_operation_event(session, self.operation_id, "move-replanned",
                            f"{move.instance_name}: failed on {failed_on}; now to {selection.chosen}")

    def _snapshot_with_planned(self, session: Session, move_id: int) -> Snapshot:
        """The scheduler's snapshot with this operation's other planned moves
        placed: they are not migrations yet, so the inventory does not count
        them, and a re-plan must not take their room or break their
        anti-affinity (their own destinations are not checked for groups
        when they are submitted)."""
        from livemig.scheduler.inventory import snapshot

        world = snapshot(session)
        for other in operation_moves(session, self.operation_id):
            if other.id == move_id or other.status != MoveStatus.PLANNED.value or other.dest_host is None:
                continue
            instance = world.instances.get(other.instance_uuid)
            if instance is not None and instance.host == other.source_host and other.dest_host in world.hosts:
                world = world.place(instance, other.dest_host)
        return world

    def _fail(self, session: Session, move: OperationMove, reason: str) -> None:
        move.status, move.reason = MoveStatus.FAILED.value, reason
        add_operation_event(session, self.operation_id, "move-failed", f"{move.instance_name}: {reason}")

    # -- submitting ---------------------------------------------------------------------------------

    def _submit_planned(self, arguments: dict, requested_by: str, abort: bool, kind: OperationKind) -> _Tally:
        tally = _Tally()
        with self.services.db.reading() as session:
            moves = operation_moves(session, self.operation_id)
            busy = _busy_hosts(session)
            limits = dict(session.execute(sa.select(Host.name, Host.max_concurrent_migrations)).all())
        parallel = arguments.get("parallel")
        in_flight = [m for m in moves if MoveStatus(m.status).in_flight]
        tally.in_flight = [m.migration_id for m in in_flight]
        wave = current_wave(moves)
        for move in moves:
            if move.status != MoveStatus.PLANNED.value or abort:
                continue
            adopted = self._adopt(move) if move.id not in self._looked_for_lost else None
            self._looked_for_lost.add(move.id)
            if adopted is not None:
                tally.in_flight.append(adopted)
                continue
            if move.wave is not None and wave is not None and move.wave > wave:
                tally.planned += 1  # its wave starts when the ones before it have ended
                continue
            if parallel is not None and len(tally.in_flight) >= parallel:
                tally.planned += 1
                continue
            hosts = (move.source_host, move.dest_host)
            if any(busy.get(h, 0) >= limits.get(h, 1) for h in hosts):
                # The migration would only queue for its reservations: wait
                # until the hosts have a free slot (other moves can go first).
                tally.planned += 1
                continue
            migration_id = self._submit(move, arguments, requested_by, kind)
            if migration_id is None:
                with self.services.db.reading() as session:
                    status = session.get(OperationMove, move.id).status
                if status == MoveStatus.PLANNED.value:
                    tally.planned += 1
                continue
            for host in hosts:
                busy[host] = busy.get(host, 0) + 1
            tally.in_flight.append(migration_id)
            tally.changed = True
        return tally

    def _adopt(self, move: OperationMove) -> int | None:
        """A migration of this move recorded after its last known one (a
        submission whose marking a crash lost): followed, not submitted again."""
        with self.services.db.session() as session:
            found = session.scalars(_lost_migrations(self.operation_id, move).order_by(Migration.id.desc())).first()
            if found is None:
                return None
            check_operation_claim(session, self.operation_id)
            row = session.get(OperationMove, move.id)
            row.migration_id, row.dest_host, row.status = found.id, found.dest_host, MoveStatus.SUBMITTED.value
            add_operation_event(session, self.operation_id, "move-adopted",
                                f"{move.instance_name}: migration {found.id} found again")
            return found.id

    def _submit(self, move: OperationMove, arguments: dict, requested_by: str, kind: OperationKind) -> int | None:
        """Record the move's migration (marking the move submitted in the same
        transaction) and hand it to the runner; None if it was not submitted."""
        from livemig import api

        with self.services.db.reading() as session:
            instance = session.get(Instance, move.instance_uuid)
            skip = _why_not_movable(instance, move, session.get(Host, move.source_host))
        if skip is not None:
            if skip.startswith("wait:"):
                return None
            with self.services.db.session() as session:
                check_operation_claim(session, self.operation_id)
                row = session.get(OperationMove, move.id)
                row.status, row.reason = MoveStatus.SKIPPED.value, skip
                add_operation_event(session, self.operation_id, "move-skipped", f"{move.instance_name}: {skip}")
            return None

        def mark_submitted(session: Session, migration_id: int) -> None:
            check_operation_claim(session, self.operation_id)
            row = session.get(OperationMove, move.id)
            if row.status != MoveStatus.PLANNED.value:
                raise Conflict(f"move of {move.instance_name} is {row.status}, no longer planned")
            row.status, row.migration_id = MoveStatus.SUBMITTED.value, migration_id
            add_operation_event(session, self.operation_id, "move-submitted",
                                f"{move.instance_name}: {move.source_host} -> {move.dest_host} "
                                f"(migration {migration_id})")

        context = RequestContext(user=requested_by or "livemig", roles=frozenset({"admin"}))
        options = dict(arguments.get("migration_options") or {})
        try:
            migration_id, _ids, _hosts = api._record_migration(
                context, self.services, move.instance_uuid, move.source_host, move.dest_host, options,
                operation_id=self.operation_id, on_recorded=mark_submitted, policy=arguments.get("policy"))
        except OperationFenced:
            raise
        except InstanceNotOnSource as exc:
            # The same on every destination: trying others would only use up the move's tries.
            with self.services.db.session() as session:
                check_operation_claim(session, self.operation_id)
                self._fail(session, session.get(OperationMove, move.id), f"{exc}; not tried elsewhere")
            return None
        except Conflict as exc:
            if "already in migration" in str(exc):
                return None  # another migration moves it now: look again later
            return self._refused_at_submit(move, str(exc), arguments, kind)
        except PrecheckFailed as exc:
            return self._refused_at_submit(move, str(exc), arguments, kind)
        except HostUnreachable as exc:
            return self._refused_at_submit(move, str(exc), arguments, kind)
        except ServiceUnavailable:
            raise  # the database or ZooKeeper: nothing recorded, submitted when it is back
        except LivemigError as exc:
            return self._refused_at_submit(move, f"{type(exc).__name__}: {exc}", arguments, kind)
        self.runner.submitted(migration_id)
        return migration_id

    def _refused_at_submit(self, move: OperationMove, why: str, arguments: dict, kind: OperationKind) -> None:
        """The precheck refused the planned destination (it filled up since
        the plan, say): another host, or the move fails (a planner's move,
        whose destination was part of its plan, always fails)."""
        refused = self._refused.setdefault(move.id, set())
        refused.add(move.dest_host)
        with self.services.db.session() as session:
            check_operation_claim(session, self.operation_id)
            row = session.get(OperationMove, move.id)
            if kind.planned:
                self._fail(session, row, f"refused by {move.dest_host}: {why}; not re-planned: a {kind.value} "
                                         f"runs its plan as made")
                return None
            tried = hosts_tried(move_migrations(session, self.operation_id, move.instance_uuid)) | refused
            if len(tried) > self.max_retries:
                self._fail(session, row, f"refused by {move.dest_host}: {why}; no retry left")
                return None
            selection = replan_move(self._snapshot_with_planned(session, move.id), move.instance_uuid, tried,
                                    arguments.get("to") or None, arguments.get("weigher", "spread"))
            if selection.chosen is None:
                self._fail(session, row, f"refused by {move.dest_host}: {why}; {selection.why_none()}")
                return None
            row.dest_host, row.reason = selection.chosen, f"refused by {move.dest_host}: {why}"
            add_operation_event(session, self.operation_id, "move-replanned",
                                f"{move.instance_name}: refused by {move.dest_host} ({why}); now to "
                                f"{selection.chosen}")
        return None

    # -- aborting -----------------------------------------------------------------------------------

    def _cancel_planned(self, moves: list[OperationMove]) -> None:
        planned = [m.id for m in moves if m.status == MoveStatus.PLANNED.value]
        if not planned:
            return
        with self.services.db.session() as session:
            check_operation_claim(session, self.operation_id)
            for move_id in planned:
                row = session.get(OperationMove, move_id)
                if row.status == MoveStatus.PLANNED.value and self._adopt_in(session, row) is None:
                    row.status, row.reason = MoveStatus.CANCELLED.value, "the operation was aborted"
            add_operation_event(session, self.operation_id, "moves-cancelled",
                                f"{len(planned)} move(s) not started were cancelled")

    def _adopt_in(self, session: Session, row: OperationMove) -> int | None:
        found = session.scalar(_lost_migrations(self.operation_id, row).with_only_columns(Migration.id)
                               .order_by(Migration.id.desc()).limit(1))
        if found is not None:
            row.migration_id, row.status = found, MoveStatus.SUBMITTED.value
        return found

    def _abort_in_flight(self, moves: list[OperationMove], requested_by: str) -> None:
        from livemig import api

        context = RequestContext(user=requested_by or "livemig", roles=frozenset({"admin"}))
        for move in moves:
            if not MoveStatus(move.status).in_flight or move.migration_id in self._aborted_in_flight:
                continue
            self._aborted_in_flight.add(move.migration_id)
            try:
                api.abort(context, move.migration_id, settings=self.services.settings)
            except LivemigError as exc:  # past the point of no return, or ended meanwhile
                LOG.info("operation %s: migration %s not aborted: %s", self.operation_id, move.migration_id, exc)


def current_wave(moves: Iterable[OperationMove]) -> int | None:
    """The lowest wave with a move not ended: only its moves may start (None:
    every wave has ended, or the moves have no waves)."""
    return min((m.wave for m in moves if m.wave is not None and not MoveStatus(m.status).finished), default=None)


def _lost_migrations(operation_id: int, move: OperationMove) -> sa.Select:
    """The operation's migrations of this move recorded after its last known
    one. A move is its instance leaving its source: a plan's stop-over moves
    one instance twice, from two sources, and each finds only its own."""
    return sa.select(Migration).where(
        Migration.operation_id == operation_id, Migration.instance_uuid == move.instance_uuid,
        Migration.source_host == move.source_host, Migration.id > (move.migration_id or 0))


def _why_not_movable(instance: Instance | None, move: OperationMove, source: Host | None) -> str | None:
    """None if the move may be submitted now; "wait: ..." if it may later;
    else why it is skipped (the VM is no longer where the plan found it, or
    its host may not migrate). A refusal that every destination would give
    is decided here, not by the precheck: that would re-plan the move on
    one host after another."""
    if instance is None or instance.state == InstanceState.DELETED.value:
        return "the instance is no longer in the inventory"
    if instance.state == InstanceState.MIGRATING.value:
        return "wait: in another migration"
    if instance.host != move.source_host:
        return f"already on {instance.host or 'no host'}, not on {move.source_host}: not moved again"
    if instance.state != InstanceState.RUNNING.value:
        return f"it is {instance.state}, not running (only a running instance is live-migrated)"
    if source is not None and not source.enabled:
        why = f" ({source.disabled_reason})" if source.disabled_reason else ""
        return f"host {source.name} is disabled{why}: nothing migrates from it"
    return None


def _busy_hosts(session: Session) -> dict[str, int]:
    """Unfinished migrations each host takes part in (in plus out), of every
    operation and of single migrations."""
    busy: dict[str, int] = {}
    for source, dest in session.execute(unfinished_migrations().with_only_columns(
            Migration.source_host, Migration.dest_host)).all():
        busy[source] = busy.get(source, 0) + 1
        busy[dest] = busy.get(dest, 0) + 1
    return busy
