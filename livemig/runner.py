"""The one place that builds TaskFlow engines: create a migration's logbook,
run it in this process, or resume it from its persisted state."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import sqlalchemy as sa
from taskflow import engines, states as tf_states
from taskflow.engines.helpers import save_factory_details
from taskflow.listeners.base import Listener
from taskflow.persistence import models as tf_models
from taskflow.storage import Storage

from livemig import fencing
from livemig.errors import Conflict, LivemigError
from livemig.flows import keys
from livemig.flows.live_migration import FACTORY_NAME
from livemig.persistence.inventory import (
    add_event, get_migration, raise_claim_epoch, record_leftover, set_migration_status,
)
from livemig.services import Services, building_flows_with
from livemig.states import AUDITED_ATOM_STATES, MigrationStatus

LOG = logging.getLogger("livemig.runner")


class MigrationEventListener(Listener):
    """Puts every step's state change into the migration's audit trail.

    The events are written by livemig's TaskFlow connection, in the same
    transaction as the state they record (see LivemigConnection.track); this
    listener names the flow's migration for the length of the run and logs
    the steps."""

    def __init__(self, engine, services: Services, migration_id: int):
        super().__init__(engine, task_listen_for=tuple(AUDITED_ATOM_STATES), flow_listen_for=())
        self._connection = services.db.taskflow_backend().get_connection()
        self._migration_id = migration_id

    def register(self) -> None:
        storage = self._engine.storage
        self._connection.track(storage.flow_uuid, self._migration_id, storage.get_flow_state())
        super().register()

    def deregister(self) -> None:
        super().deregister()
        self._connection.untrack(self._engine.storage.flow_uuid)

    def _task_receiver(self, state: str, details: dict[str, Any]) -> None:
        # Debug only: the trail has every step, and a conductor's log says
        # what it claimed and finished (at 20 migrations a second, 480 step
        # lines a second cost it a fortieth of its time).
        LOG.debug("migration %s: step %s %s", self._migration_id, details.get("task_name"), state)


def migration_store(migration_id: int, instance_uuid: str, source_host: str, dest_host: str,
                    queue_timeout_s: float | None = None) -> dict[str, Any]:
    store: dict[str, Any] = {keys.MIGRATION_ID: migration_id, keys.INSTANCE_UUID: instance_uuid,
                             keys.SOURCE_HOST: source_host, keys.DEST_HOST: dest_host}
    if queue_timeout_s is not None:
        store["queue_timeout_s"] = queue_timeout_s
    return store


def new_logbook_ids() -> tuple[str, str]:
    """Uuids of a migration's logbook and flow, known before either is saved
    so that the migration row can name them when it is created."""
    return _new_uuid(), _new_uuid()


def create_logbook(services: Services, migration_id: int, store: dict[str, Any], book_id: str,
                   flow_id: str, connection: sa.Connection, options: Mapping[str, Any] | None = None) -> None:
    """Persist the flow (factory name, the migration's options and its store)
    before anything runs, so that any controller can run or resume it from
    the database alone. Inserted through `connection`, in the transaction
    that records the migration: a migration is never recorded without its flow.

    Only the migration's identity (the store) and its options are saved:
    whoever runs the flow brings its own settings, so no logbook or job holds
    this process's database URL, ZooKeeper hosts or policies."""
    book = tf_models.LogBook(logbook_name(migration_id), uuid=book_id)
    flow_detail = tf_models.FlowDetail(keys.FLOW_NAME, uuid=flow_id)
    book.add(flow_detail)
    save_factory_details(flow_detail, FACTORY_NAME, [dict(options or {})], {})
    flow_detail.meta["store"] = store  # where TaskFlow's conductors look for it
    # The store as the flow's injected arguments, through TaskFlow's storage
    # alone (building the flow and an engine for it cost twice as much), in
    # memory first, so that the logbook is inserted whole.
    Storage(flow_detail).inject(store)
    services.db.taskflow_backend().get_connection().insert_logbook(connection, book)


def logbook_name(migration_id: int) -> str:
    return f"livemig-migration-{migration_id}"


def _new_uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def claim_migration(services: Services, migration_id: int) -> int:
    """A new claim of the migration, by whoever is about to run it: returns its
    fencing token (see livemig.fencing). An outcome is final: raises
    MigrationEnded for a migration whose outcome is recorded (TaskFlow itself
    would run a reverted flow again from the start)."""
    with services.db.transaction() as conn:
        return raise_claim_epoch(conn, migration_id)


@contextlib.contextmanager
def claimed(services: Services, migration_id: int) -> Iterator[int]:
    """Claim the migration and run this thread's writes under the claim."""
    epoch = claim_migration(services, migration_id)
    with fencing.claimed(migration_id, epoch):
        yield epoch


def load_engine(services: Services, migration_id: int):
    """The migration's engine, from its persisted flow. Only under a claim
    (see `claimed`): the one check that no step of an ended migration runs."""
    claim = fencing.current_claim()
    if claim is None or claim.migration_id != migration_id:
        raise LivemigError(f"migration {migration_id}: an engine is built only under a claim")
    with services.db.reading() as session:
        migration = get_migration(session, migration_id)
        book_id, flow_id = migration.logbook_id, migration.flow_id
    if not book_id:
        raise LivemigError(f"migration {migration_id} has no persisted flow")
    backend = services.db.taskflow_backend()
    with contextlib.closing(backend.get_connection()) as conn:
        book = conn.get_logbook(book_id)
    flow_detail = book.find(flow_id)
    with building_flows_with(services):  # this caller's settings, not the process's
        return engines.load_from_detail(flow_detail, engine="serial", backend=backend)


@contextlib.contextmanager
def run_lock(services: Services, migration_id: int) -> Iterator[None]:
    """Only one local process runs a given migration; the lock dies with it,
    which is what lets `migration resume` take over after a SIGKILL."""
    with process_lock(services, f"{migration_id}.lock", f"migration {migration_id}"):
        yield


@contextlib.contextmanager
def process_lock(services: Services, file_name: str, what: str) -> Iterator[None]:
    """An exclusive flock on DATA_DIR/runs/FILE_NAME, holding this process's
    pid; Conflict ("WHAT is being run by pid N") if another process holds it."""
    path = Path(services.settings.data_dir) / "runs" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                lock.seek(0)
                owner = lock.read().strip() or "another process"
                raise Conflict(f"{what} is being run by {owner}") from None
            raise
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_engine(services: Services, migration_id: int, engine) -> None:
    """Run (or resume) an engine; the flow itself records the outcome."""
    with MigrationEventListener(engine, services, migration_id):
        try:
            engine.run()
        except Exception as exc:  # noqa: BLE001 - the outcome is in the migration row
            LOG.info("migration %s: flow ended with %s: %s", migration_id, type(exc).__name__, exc)
            ensure_outcome_recorded(services, migration_id, exc)


def ensure_outcome_recorded(services: Services, migration_id: int, exc: Exception | None) -> None:
    # If even the revert could not record the outcome, say so on the row.
    try:
        with services.db.session() as session:
            migration = get_migration(session, migration_id)
            if MigrationStatus(migration.status).finished:
                return  # the usual case: no need to load the whole logbook
            flow_state = _flow_state(services, migration)
            # A suspended or interrupted flow has no outcome yet; an ended one must.
            if flow_state in (tf_states.FAILURE, tf_states.REVERTED, tf_states.SUCCESS):
                detail = f": {exc}" if exc is not None else ""
                set_migration_status(session, migration_id, MigrationStatus.ERROR,
                                     f"the flow ended ({flow_state}) but its revert did not record an outcome{detail}")
    except LivemigError as err:
        LOG.error("migration %s: cannot record its outcome: %s", migration_id, err)


def _flow_state(services: Services, migration) -> str | None:
    """TaskFlow's own record of how the flow ended (None if unknown)."""
    try:
        backend = services.db.taskflow_backend()
        with contextlib.closing(backend.get_connection()) as conn:
            book = conn.get_logbook(migration.logbook_id)
        flow_detail = book.find(migration.flow_id)
        return flow_detail.state if flow_detail is not None else None
    except Exception:  # noqa: BLE001 - best effort
        return None


def end_unrunnable(services: Services, migration_id: int, reason: str) -> None:
    """Ends, with `reason`, a claimed migration whose flow cannot be built or
    run here, so that it is not left mid-flight (instance `migrating`, hosts
    reserved) with nobody to revert it: the instance is recorded where the VM
    runs, the hosts are released if the VM runs on exactly one of them, and
    what cannot be told is kept for `livemig reconcile`."""
    with services.db.reading() as session:
        migration = get_migration(session, migration_id)
        hosts, instance_uuid = [migration.source_host, migration.dest_host], migration.instance_uuid
    running, unknown = [], []
    for host in hosts:
        try:
            driver = services.drivers.for_uri(services.host_uri(host))
            found = driver.find_domain(services.host_uri(host), instance_uuid)
            if found is not None and found.migration_job_active:
                driver.abort_migration(services.host_uri(host), instance_uuid)
                found = driver.find_domain(services.host_uri(host), instance_uuid)
        except LivemigError as exc:
            unknown.append(f"{host} ({exc})")
            continue
        if found is not None and found.running:
            running.append(host)
    from livemig.persistence.models import Instance
    from livemig.states import InstanceState

    with services.db.session() as session:
        instance = session.get(Instance, instance_uuid)
        if len(running) == 1 and not unknown:
            where = f"the VM runs on {running[0]}"
            if instance is not None:
                instance.host, instance.state = running[0], InstanceState.RUNNING.value
        else:
            where = (f"cannot tell where the VM runs: {', '.join(unknown)}" if unknown
                     else f"the VM runs on {' and '.join(running) or 'no host'}")
            if instance is not None:
                instance.state = InstanceState.ERROR.value
            record_leftover(session, "reservation", ",".join(hosts), f"kept: {where}", migration_id=migration_id)
        # What its setup steps defined on the destination is not undone here.
        record_leftover(session, "migration", str(migration_id), f"ended without its revert: {reason}",
                        host=hosts[1], migration_id=migration_id)
        status = (MigrationStatus.FAILED if running == [hosts[0]] and not unknown else MigrationStatus.ERROR)
        set_migration_status(session, migration_id, status, f"{reason}; {where}")
    if len(running) == 1 and not unknown:
        services.reservations.release(migration_id, hosts)
    LOG.error("migration %s ended %s: %s; %s", migration_id, status.value, reason, where)


def run_migration(services: Services, migration_id: int) -> None:
    with run_lock(services, migration_id), claimed(services, migration_id):
        run_engine(services, migration_id, load_engine(services, migration_id))


def resume_migration(services: Services, migration_id: int) -> None:
    with run_lock(services, migration_id), claimed(services, migration_id):
        engine = load_engine(services, migration_id)
        flow_state = engine.storage.get_flow_state()
        with services.db.session() as session:
            migration = get_migration(session, migration_id)
            # A flow killed after its outcome was recorded but before TaskFlow
            # saved its own end still has steps to finish; one that ended has none.
            if flow_state in (tf_states.SUCCESS, tf_states.REVERTED, tf_states.FAILURE):
                raise Conflict(f"migration {migration_id} already ended ({migration.status})")
            add_event(session, migration_id, "note", "resume", "",
                      f"resumed from the persisted flow (it was {flow_state})")
        run_engine(services, migration_id, engine)
