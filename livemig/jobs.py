"""Migrations as jobs on TaskFlow's ZooKeeper jobboard, run by conductors.

`post_migration_job` hands a persisted flow to the board; any `livemig
conductor` claims it and runs it from the SQL logbook. A conductor that dies
loses its claim when its ZooKeeper session expires and another resumes the
flow. Every claim raises the migration's claim epoch (livemig.fencing): one
that was frozen and lost its claim writes nothing when it wakes, and stops
before its next step (ClaimFence). A migration whose outcome is recorded is
never run again: its job is discarded."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from kazoo.client import KazooState
from taskflow import states as tf_states
from taskflow.conductors.backends.impl_nonblocking import NonBlockingConductor
from taskflow.listeners.base import Listener
from taskflow.persistence import models as tf_models

import sqlalchemy as sa
from kazoo import exceptions as kazoo_exc
from taskflow import exceptions as tf_exc

from livemig import fencing, lazy
from livemig.coordination.jobboard import LivemigJobBoard
from livemig.coordination.zookeeper import start_client
from livemig.errors import CoordinationUnavailable, MigrationEnded, MigrationNotFound, ServiceUnavailable
from livemig.load.sampler import start_sampler_thread
from livemig.persistence.inventory import controller_id, get_migration
from livemig.runner import (
    MigrationEventListener, claim_migration, end_unrunnable, ensure_outcome_recorded, load_engine, logbook_name,
)
from livemig.services import Services, configure

LOG = logging.getLogger("livemig.conductor")
BOARD_NAME = "livemig-migrations"


def open_board(services: Services, client=None, watch_jobs: bool = True) -> LivemigJobBoard:
    """A connected jobboard (raises CoordinationUnavailable). A process that
    only posts passes `watch_jobs=False` (see LivemigJobBoard). Without a
    `client`, the board starts its own, and closing the board ends it."""
    settings = services.settings
    owns_client = client is None
    client = client or start_client(settings)
    conf = {"board": "zookeeper", "hosts": settings.zookeeper_hosts,
            "path": f"{settings.zookeeper_root.rstrip('/')}/jobs", "timeout": settings.zookeeper_session_timeout}
    board = LivemigJobBoard(BOARD_NAME, conf, persistence=services.db.taskflow_backend(), client=client,
                            watch_jobs=watch_jobs, owns_client=owns_client)
    try:
        board.connect()
    except Exception as exc:  # noqa: BLE001 - TaskFlow wraps kazoo's errors variously
        if owns_client:
            board.close()
        raise CoordinationUnavailable(f"ZooKeeper jobboard at {settings.zookeeper_hosts} is unavailable: {exc}") \
            from None
    return board


def post_migration_job(services: Services, migration_id: int, board=None,
                       logbook_ids: tuple[str, str] | None = None, hosts: tuple[str, str] | None = None) -> str:
    """Post the migration's persisted flow as a job; returns the job's uuid.
    `logbook_ids`: its (logbook, flow) uuids, and `hosts` its (source,
    destination), if the caller has them."""
    if logbook_ids is None or hosts is None:
        with services.db.reading() as session:
            migration = get_migration(session, migration_id)
            logbook_ids = (migration.logbook_id, migration.flow_id)
            hosts = (migration.source_host, migration.dest_host)
    book_id, flow_id = logbook_ids
    # The posting names the logbook (name and uuid); conductors load it.
    book = tf_models.LogBook(logbook_name(migration_id), uuid=book_id)
    own_board = board is None
    board = board or open_board(services, watch_jobs=False)
    try:
        job = board.post(logbook_name(migration_id), book=book,
                         # The hosts let conductors take jobs whose hosts are free first.
                         details={"flow_uuid": flow_id, "migration_id": migration_id, "hosts": list(hosts)})
    finally:
        if own_board:
            board.close()
    services.db.set_job(migration_id, job.uuid)
    return job.uuid


class SessionTracker:
    """Counts lost ZooKeeper sessions: every claim made in an earlier session
    is lost with it (its lock node was ephemeral)."""

    def __init__(self, client) -> None:
        self._lock = threading.Lock()
        self.client = client
        self.generation = 0
        client.add_listener(self.on_state)

    def on_state(self, state: str) -> None:
        if state == KazooState.LOST:
            with self._lock:
                self.generation += 1


class ClaimFence(Listener):
    """Stops the engine before its next step once this conductor no longer
    owns the job (its session expired while it was frozen or partitioned).
    The step that was running when the claim was lost may finish: every
    livemig step is safe to run twice."""

    def __init__(self, engine, job, name: str, sessions: SessionTracker, session_timeout_s: float):
        super().__init__(engine, task_listen_for=(tf_states.SUCCESS, tf_states.FAILURE, tf_states.REVERTED),
                         flow_listen_for=())
        self._job, self._name, self._sessions = job, name, sessions
        self._generation = sessions.generation  # the claim was made in this session
        # ZooKeeper expires a session only after a whole timeout without hearing
        # from it: for half a timeout after a request that proved the claim,
        # the claim still holds (a freeze in between makes the gap longer).
        self._proof_lasts_s = session_timeout_s / 2
        self._proven_at: float | None = None
        self.fenced = False

    def _task_receiver(self, state: str, details: dict[str, Any]) -> None:
        if self.fenced:
            return
        if self._sessions.generation == self._generation and self._claim_held():
            return
        self.fenced = True
        LOG.warning("conductor %s lost its claim on %s; stopping before the next step", self._name, self._job.name)
        self._engine.suspend()

    def _claim_held(self) -> bool:
        """The claim is an ephemeral node of this conductor's session: it
        exists, and is ours, exactly while that session lives. One read; a
        request in an expired session fails, which also means lost."""
        asked_at = time.monotonic()
        if self._proven_at is not None and asked_at - self._proven_at < self._proof_lasts_s:
            return True
        try:
            stat = self._sessions.client.exists(self._job.lock_path)
            held = stat is not None and stat.ephemeralOwner == self._sessions.client.client_id[0]
        except Exception:  # noqa: BLE001 - cannot prove ownership: stop
            return False
        if held:
            self._proven_at = asked_at
        return held


# How long a conductor waits before handing back a job it could not start
# for a transient reason, so that it does not spin on the same job.
HAND_BACK_DELAY_S = 1.0


def is_transient(exc: BaseException) -> bool:
    """Whether starting a job failed for a reason that may pass by itself (a
    database or ZooKeeper blip): the job goes back to the board. Anything
    else (a flow that cannot be rebuilt, a logbook that is gone) stays."""
    if isinstance(exc, (ServiceUnavailable, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError,
                        kazoo_exc.ConnectionLoss, kazoo_exc.SessionExpiredError, kazoo_exc.OperationTimeoutError)):
        return True
    if isinstance(exc, tf_exc.StorageFailure) and not isinstance(exc, tf_exc.NotFound):
        cause = exc.cause or exc.__cause__
        return cause is None or is_transient(cause)
    return False


class MigrationConductor(NonBlockingConductor):
    """Runs up to `max_simultaneous_jobs` migrations at once, each in its own
    thread (a live migration mostly waits on its hypervisors), records
    livemig's events and fences itself."""

    def __init__(self, name: str, board, services: Services, sessions: SessionTracker, **kwargs: Any):
        super().__init__(name, board, persistence=services.db.taskflow_backend(), engine="serial", **kwargs)
        self._services = services
        self._sessions = sessions
        # A fleet operation's job holds a slot for its whole run while its
        # moves, migration jobs, need slots of their own: operations never
        # take a conductor's last slot, or drains that filled every slot
        # would wait for ever on moves that no conductor can claim.
        slots = kwargs.get("max_simultaneous_jobs")
        self._operation_slots = slots - 1 if slots is not None and slots > 0 else None
        self._operations_running = 0
        self._operations_lock = threading.Lock()
        # The engine _dispatch_job built, under its claim, for TaskFlow's
        # dispatch to run (per thread: each job runs on its own).
        self._built = threading.local()

    def _engine_from_job(self, job):
        # TaskFlow builds the engine outside its own error handling, and a
        # job whose build raised is trashed: _dispatch_job builds it first.
        return self._built.engine

    def _listeners_from_job(self, job, engine):
        listeners = super()._listeners_from_job(job, engine)
        migration_id = (job.details or {}).get("migration_id")
        if migration_id is not None:
            listeners.append(MigrationEventListener(engine, self._services, migration_id))
        listeners.append(ClaimFence(engine, job, self._name, self._sessions,
                                    self._services.settings.zookeeper_session_timeout))
        return listeners

    def _dispatch_job(self, job):
        """Returns whether the board should consume the job (else it is handed back)."""
        operation_id = (job.details or {}).get("operation_id")
        if operation_id is not None:
            # A fleet operation (livemig.operations): its own claim and flow.
            from livemig.operations.jobs import dispatch_operation_job

            if not self._take_operation_slot():
                LOG.warning("conductor %s: operation %s would take the last of its slots, which its moves "
                            "need; handing %s back", self._name, operation_id, job.name)
                time.sleep(HAND_BACK_DELAY_S)
                return False
            try:
                return dispatch_operation_job(self, job, operation_id, super()._dispatch_job)
            finally:
                with self._operations_lock:
                    self._operations_running -= 1
        migration_id = (job.details or {}).get("migration_id")
        LOG.info("conductor %s: claimed %s (migration %s)", self._name, job.name, migration_id)
        if migration_id is None:
            LOG.error("conductor %s: %s names no migration; discarding it", self._name, job.name)
            return True
        try:
            epoch = claim_migration(self._services, migration_id)
        except (MigrationEnded, MigrationNotFound) as exc:
            # A re-posted job, or one whose consumption failed after its
            # outcome was recorded: an outcome is final, nothing runs.
            LOG.warning("conductor %s: %s; discarding %s", self._name, exc, job.name)
            self._note(migration_id, "discarded", f"job {job.uuid} discarded by {self._name}: {exc}")
            return True
        except Exception as exc:  # noqa: BLE001 - classified below
            return self._not_started(job, migration_id, exc)
        with fencing.claimed(migration_id, epoch):
            try:
                self._built.engine = load_engine(self._services, migration_id)
                consume = super()._dispatch_job(job)
            except Exception as exc:  # noqa: BLE001 - the flow never ran: classified below
                return self._not_started(job, migration_id, exc)
            finally:
                self._built.engine = None
            try:
                fencing.ensure_current_claim(self._services.db, migration_id)
            except fencing.Fenced as exc:
                # Another claimed it since: its job and outcome are not ours to touch.
                LOG.warning("conductor %s: %s", self._name, exc)
                return False
            except Exception:  # noqa: BLE001 - cannot tell; the board's owner check decides
                pass
            if consume:
                # A failed job is consumed by the board: its outcome must be in our records.
                ensure_outcome_recorded(self._services, migration_id, None)
        LOG.info("conductor %s: %s %s", self._name, "finished" if consume else "handed back", job.name)
        return consume

    def _take_operation_slot(self) -> bool:
        with self._operations_lock:
            if self._operation_slots is not None and self._operations_running >= self._operation_slots:
                return False
            self._operations_running += 1
            return True

    def _not_started(self, job, migration_id: int, exc: Exception) -> bool:
        """A job whose flow could not be started: handed back for a transient
        reason, else its migration ends with the reason (never left mid-flight)."""
        what = f"{type(exc).__name__}: {exc}"
        if is_transient(exc):
            LOG.warning("conductor %s: cannot start %s now (%s); handing it back", self._name, job.name, what)
            time.sleep(HAND_BACK_DELAY_S)
            return False
        LOG.error("conductor %s: cannot run %s: %s", self._name, job.name, what)
        try:
            end_unrunnable(self._services, migration_id, f"conductor {self._name} cannot run its flow: {what}")
        except Exception as err:  # noqa: BLE001 - then the job waits on the board for one that can
            LOG.error("conductor %s: cannot end migration %s either (%s); handing %s back", self._name,
                      migration_id, err, job.name)
            time.sleep(HAND_BACK_DELAY_S)
            return False
        return True

    def _note(self, migration_id: int, state: str, message: str) -> None:
        try:
            self._services.db.record_event(migration_id, "note", "conductor", state, message)
        except Exception as exc:  # noqa: BLE001 - the log line says it anyway
            LOG.warning("conductor %s: cannot note on migration %s: %s", self._name, migration_id, exc)


def run_conductor(services: Services, name: str | None = None, once: bool = False,
                  stop_event: threading.Event | None = None, max_migrations: int | None = None) -> None:
    """Claim and run migration jobs until stopped (or after one with `once`)."""
    name = name or f"conductor-{controller_id()}"
    max_migrations = 1 if once else (max_migrations or services.settings.conductor_max_migrations)
    # A conductor lives long and runs flows on many threads: it loads now
    # what a single command defers (see livemig.lazy).
    lazy.load_all()
    configure(services.settings)  # the flows it rebuilds from jobs run with its settings
    client = start_client(services.settings)
    sessions = SessionTracker(client)
    board = open_board(services, client=client)
    _reconcile_safe_part(services, name)
    # The wait between looks at the board when nothing was claimed, which is
    # also how soon a finished migration's slot is refilled.
    conductor = MigrationConductor(name, board, services, sessions, wait_timeout=0.1,
                                   max_simultaneous_jobs=max_migrations)
    if once:
        conductor.notifier.register("job_consumed", lambda *_a, **_k: conductor.stop())
        conductor.notifier.register("job_abandoned", lambda *_a, **_k: conductor.stop())
    watcher = None
    if stop_event is not None:
        watcher = threading.Thread(target=lambda: (stop_event.wait(), conductor.stop()), daemon=True)
        watcher.start()
    LOG.info("conductor %s: waiting for jobs on %s (up to %d at once)", name, services.settings.zookeeper_hosts,
             max_migrations)
    stop_sampling = None if once else start_sampler_thread(services.db, services.drivers, services.settings,
                                                           name=f"{name} load sampler")
    try:
        conductor.run()
    finally:
        if stop_sampling is not None:
            stop_sampling()
        with contextlib.suppress(Exception):
            conductor.close()
        with contextlib.suppress(Exception):
            board.close()
        with contextlib.suppress(Exception):
            client.stop()
            client.close()
        LOG.info("conductor %s: stopped", name)


def _reconcile_safe_part(services: Services, name: str) -> None:
    """A starting conductor repairs what is safe to repair unattended
    (livemig.reconciliation: releases, inventory fixes, re-posting flows
    nobody runs); a failure here must not keep it from running jobs."""
    from livemig.reconciliation import repair_safely

    try:
        report = repair_safely(services)
    except Exception as exc:  # noqa: BLE001 - logged; the conductor still starts
        LOG.warning("conductor %s: reconcile at start failed: %s", name, exc)
        return
    LOG.info("conductor %s: reconcile at start: %d finding(s), %d repaired, %d left for an operator", name,
             len(report.findings), len(report.findings) - len(report.remaining), len(report.remaining))


def job_on_board(services: Services, job_id: str | None) -> bool:
    if not job_id:
        return False
    return any(job.uuid == job_id for job in services.jobboard.iterjobs(ensure_fresh=True))

