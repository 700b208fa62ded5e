"""Migrations as jobs on TaskFlow's ZooKeeper jobboard, run by conductors.

`post_migration_job` hands a persisted flow to the board; any `livemig
conductor` claims it and runs it from the SQL logbook. A conductor that dies
loses its claim when its ZooKeeper session expires and another resumes the
flow; one that was frozen and lost its claim is fenced off before its next
step (ClaimFence)."""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from kazoo.client import KazooState
from taskflow import states as tf_states
from taskflow.conductors.backends.impl_blocking import BlockingConductor
from taskflow.jobs import backends as job_backends
from taskflow.listeners.base import Listener

from livemig.coordination.zookeeper import start_client
from livemig.errors import CoordinationUnavailable
from livemig.persistence.inventory import add_event, controller_id, get_migration
from livemig.runner import MigrationEventListener, ensure_outcome_recorded
from livemig.services import Services

LOG = logging.getLogger("livemig.conductor")
BOARD_NAME = "livemig-migrations"


def open_board(services: Services, client=None):
    """A connected jobboard (raises CoordinationUnavailable)."""
    settings = services.settings
    client = client or start_client(settings)
    conf = {"board": "zookeeper", "hosts": settings.zookeeper_hosts,
            "path": f"{settings.zookeeper_root.rstrip('/')}/jobs", "timeout": settings.zookeeper_session_timeout}
    board = job_backends.fetch(BOARD_NAME, conf, persistence=services.db.taskflow_backend(), client=client)
    try:
        board.connect()
    except Exception as exc:  # noqa: BLE001 - TaskFlow wraps kazoo's errors variously
        raise CoordinationUnavailable(f"ZooKeeper jobboard at {settings.zookeeper_hosts} is unavailable: {exc}") \
            from None
    return board


def post_migration_job(services: Services, migration_id: int, board=None) -> str:
    """Post the migration's persisted flow as a job; returns the job's uuid."""
    with services.db.session() as session:
        migration = get_migration(session, migration_id)
        book_id, flow_id = migration.logbook_id, migration.flow_id
    backend = services.db.taskflow_backend()
    with contextlib.closing(backend.get_connection()) as conn:
        book = conn.get_logbook(book_id)
    own_board = board is None
    board = board or open_board(services)
    try:
        job = board.post(f"livemig-migration-{migration_id}", book=book,
                         details={"flow_uuid": flow_id, "migration_id": migration_id})
    finally:
        if own_board:
            board.close()
    with services.db.session() as session:
        get_migration(session, migration_id).job_id = job.uuid
        add_event(session, migration_id, "note", "jobboard", "posted", f"job {job.uuid}")
    return job.uuid


class ClaimFence(Listener):
    """Stops the engine before its next step once this conductor no longer
    owns the job (its session expired while it was frozen or partitioned).
    The step that was running when the claim was lost may finish: every
    livemig step is safe to run twice."""

    def __init__(self, engine, board, job, name: str, lost: threading.Event):
        super().__init__(engine, task_listen_for=(tf_states.SUCCESS, tf_states.FAILURE, tf_states.REVERTED),
                         flow_listen_for=())
        self._board, self._job, self._name, self._lost = board, job, name, lost
        self.fenced = False

    def _task_receiver(self, state: str, details: dict[str, Any]) -> None:
        if self.fenced:
            return
        owner = None
        if not self._lost.is_set():
            try:
                owner = self._board.find_owner(self._job)
            except Exception:  # noqa: BLE001 - cannot prove ownership: stop
                owner = None
        if owner != self._name:
            self.fenced = True
            LOG.warning("conductor %s lost its claim on %s (owner now %s); stopping before the next step",
                        self._name, self._job.name, owner)
            self._engine.suspend()


class MigrationConductor(BlockingConductor):
    """A blocking conductor that records livemig's events and fences itself."""

    def __init__(self, name: str, board, services: Services, session_lost: threading.Event, **kwargs: Any):
        super().__init__(name, board, persistence=services.db.taskflow_backend(), engine="serial", **kwargs)
        self._services = services
        self._session_lost = session_lost

    def _listeners_from_job(self, job, engine):
        listeners = super()._listeners_from_job(job, engine)
        migration_id = (job.details or {}).get("migration_id")
        if migration_id is not None:
            listeners.append(MigrationEventListener(engine, self._services, migration_id))
        # A claim is owned by this session; losing the session loses the claim.
        self._session_lost.clear()
        listeners.append(ClaimFence(engine, self._jobboard, job, self._name, self._session_lost))
        return listeners

    def _dispatch_job(self, job):
        migration_id = (job.details or {}).get("migration_id")
        LOG.info("conductor %s: claimed %s (migration %s)", self._name, job.name, migration_id)
        consume = super()._dispatch_job(job)
        if migration_id is not None and consume:
            # A failed job is consumed by the board: its outcome must be in our records.
            ensure_outcome_recorded(self._services, migration_id, None)
        LOG.info("conductor %s: %s %s", self._name, "finished" if consume else "handed back", job.name)
        return consume


def run_conductor(services: Services, name: str | None = None, once: bool = False,
                  stop_event: threading.Event | None = None) -> None:
    """Claim and run migration jobs until stopped (or after one with `once`)."""
    name = name or f"conductor-{controller_id()}"
    client = start_client(services.settings)
    lost = threading.Event()

    def on_state(state: str) -> None:
        if state == KazooState.LOST:
            lost.set()

    client.add_listener(on_state)
    board = open_board(services, client=client)
    conductor = MigrationConductor(name, board, services, lost, wait_timeout=0.5)
    if once:
        conductor.notifier.register("job_consumed", lambda *_a, **_k: conductor.stop())
        conductor.notifier.register("job_abandoned", lambda *_a, **_k: conductor.stop())
    watcher = None
    if stop_event is not None:
        watcher = threading.Thread(target=lambda: (stop_event.wait(), conductor.stop()), daemon=True)
        watcher.start()
    LOG.info("conductor %s: waiting for jobs on %s", name, services.settings.zookeeper_hosts)
    try:
        conductor.run()
    finally:
        with contextlib.suppress(Exception):
            conductor.close()
        with contextlib.suppress(Exception):
            board.close()
        with contextlib.suppress(Exception):
            client.stop()
            client.close()
        LOG.info("conductor %s: stopped", name)


def job_on_board(services: Services, job_id: str | None) -> bool:
    if not job_id:
        return False
    return any(job.uuid == job_id for job in services.jobboard.iterjobs(ensure_fresh=True))

