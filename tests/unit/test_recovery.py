"""Issue 13, items 1, 4 and 6 and the smaller defects of the migration tasks:
a paused VM is recovered where it is, reverts that meet transient errors
retry and record leftovers (the outcome is always decided), a host that
cannot be asked is unknown (never absent), a queued migration aborted ends
cancelled, only migration jobs count, and a followed job keeps its options
and reports its figures."""
from __future__ import annotations

import functools
import threading
import time

import pytest
import sqlalchemy as sa

import livemig
from livemig.coordination.base import HostLimit
from livemig.coordination.local import LocalReservations
from livemig.drivers.base import DriverError
from livemig.errors import CoordinationUnavailable, DatabaseUnavailable, MigrationFailed
from livemig.persistence.database import Database, database_for
from livemig.persistence.models import Event, Leftover
from livemig.services import services_for
from livemig.tasks import lifecycle, migrate as migrate_module, undo
from livemig.tasks.lifecycle import RollBackOrTerminateInstance
from livemig.tasks.migrate import MigrateDomain
from livemig.tasks.precheck import MarkInstanceMigrating
from livemig.tasks.volumes import SetUpVolumesOnDestination
from livemig.drivers.base import MigrationTimedOut
from tests.unit.test_tasks import _prepare_destination, failure_of, make

CTX = livemig.admin_context("tests")


@pytest.fixture
def mig(cloud):
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=cloud.settings)
    return {"migration_id": view.id, "instance_uuid": cloud.vm, "source_host": "a", "dest_host": "b"}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(undo, "REVERT_PATIENCE_S", 1.0)
    monkeypatch.setattr(undo, "FIRST_DELAY_S", 0.05)
    monkeypatch.setattr(migrate_module, "REVERT_HOST_WAIT_S", 0.5)
    monkeypatch.setattr("livemig.locator.DEFAULT_PATIENCE_S", 0.5)
    monkeypatch.setattr("livemig.locator.FIRST_DELAY_S", 0.05)


def leftovers(cloud) -> list[tuple[str | None, str, str]]:
    with database_for(cloud.settings.database_url).session() as s:
        return sorted((r.host, r.kind, r.name) for r in s.scalars(sa.select(Leftover)))


# -- item 1: a paused VM is recoverable --------------------------------------------------------------

def test_vm_paused_on_source_is_left_there_not_terminated(cloud, mig):
    cloud.driver.suspend_domain(cloud.uri("a"), cloud.vm)
    make(RollBackOrTerminateInstance, cloud).revert(
        flow_failures={"migrate-domain": failure_of(DriverError("the VM is paused on a"))}, **mig)
    m = cloud.migration(mig["migration_id"])
    assert m.status == "failed" and "paused on a" in m.error_reason
    assert cloud.domains_on("a")[cloud.vm]["state"] == "paused"
    assert cloud.instance().host == "a" and cloud.instance().state == "paused"


def test_vm_suspended_mid_migration_stays_paused_on_source(cloud):
    # A long fake migration, paused by an "operator" half-way.
    settings = cloud.settings.replace(completion_timeout_min_s=3.0, completion_timeout_s_per_gib=0.0)
    cloud.driver.update_host(cloud.uri("a"), migration_seconds=30.0)
    timer = threading.Timer(0.8, lambda: cloud.driver.suspend_domain(cloud.uri("a"), cloud.vm))
    timer.start()
    try:
        with pytest.raises(MigrationFailed):
            livemig.migrate(CTX, "vm1", "a", "b", settings=settings)
    finally:
        timer.join()
    m = cloud.migration(cloud.last_migration().id)
    assert m.status == "failed", m.error_reason
    assert "paused" in m.error_reason
    assert cloud.domains_on("a")[cloud.vm]["state"] == "paused"
    assert cloud.vm not in cloud.domains_on("b")
    assert cloud.instance().host == "a" and cloud.instance().state == "paused"
    assert cloud.reservations() == []


# -- item 6: unknown is not absent -------------------------------------------------------------------

def test_volume_revert_keeps_secret_when_destination_does_not_answer_at_first(cloud, mig):
    _prepare_destination(cloud, mig)
    make(MigrateDomain, cloud, "migrate-domain").execute(**mig)  # the VM now runs on b
    cloud.driver.inject_fault(cloud.uri("b"), "find_domain", "unreachable", times=2)
    task = make(SetUpVolumesOnDestination, cloud, "set-up-volumes-on-destination")
    task.revert(result=None, flow_failures={"x": failure_of(RuntimeError("later step"))}, **mig)
    assert "vol-1" in cloud.host_record("b")["secrets"]
    assert cloud.running_on() == ["b"]


def test_migrate_revert_records_orphan_it_cannot_check(cloud, mig):
    _prepare_destination(cloud, mig)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "dest-died")
    task = make(MigrateDomain, cloud, "migrate-domain")
    with pytest.raises(DriverError) as info:
        task.execute(**mig)
    cloud.driver.update_host(cloud.uri("b"), reachable=False)
    task.revert(failure_of(info.value), flow_failures={"migrate-domain": failure_of(info.value)}, **mig)
    cloud.driver.update_host(cloud.uri("b"), reachable=True)
    assert cloud.domains_on("b")[cloud.vm]["state"] == "paused"  # nothing acted blind
    assert ("b", "domain", cloud.vm) in leftovers(cloud)


# -- item 4: reverts retry, record leftovers, and the outcome is always decided ----------------------

def _flaky_release(monkeypatch, failures: int):
    calls = {"n": 0}
    original = LocalReservations.release

    def release(self, migration_id, hosts):
        calls["n"] += 1
        if calls["n"] <= failures:
            raise CoordinationUnavailable("ZooKeeper error while releasing hosts: ConnectionLoss()")
        return original(self, migration_id, hosts)

    monkeypatch.setattr(LocalReservations, "release", release)
    return calls


def test_reservation_release_error_in_revert_is_retried_and_outcome_recorded(cloud, monkeypatch):
    calls = _flaky_release(monkeypatch, failures=2)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "error", "boom")
    with pytest.raises(MigrationFailed):
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    m = cloud.migration(cloud.last_migration().id)
    assert m.status == "failed" and "boom" in m.error_reason
    assert calls["n"] == 3
    assert cloud.reservations() == []
    assert cloud.running_on() == ["a"] and cloud.instance().state == "running"


def test_reservation_never_released_is_recorded_for_reconcile(cloud, monkeypatch):
    _flaky_release(monkeypatch, failures=10**6)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "error", "boom")
    with pytest.raises(MigrationFailed):
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    m = cloud.migration(cloud.last_migration().id)
    assert m.status == "failed" and "boom" in m.error_reason
    assert {(h, k) for h, k, _ in leftovers(cloud)} >= {("a", "reservation"), ("b", "reservation")}
    assert cloud.running_on() == ["a"]


def test_outcome_is_recorded_when_the_database_fails_at_first(cloud, mig, monkeypatch):
    calls = {"n": 0}
    original = lifecycle.set_migration_status

    def flaky(session, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise DatabaseUnavailable("database is unreachable")
        return original(session, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "set_migration_status", flaky)
    make(RollBackOrTerminateInstance, cloud).revert(
        flow_failures={"migrate-domain": failure_of(DriverError("boom"))}, **mig)
    m = cloud.migration(mig["migration_id"])
    assert m.status == "failed" and "boom" in m.error_reason


def _during_revert_of(monkeypatch, task_class, state, until_it_returns=True):
    """state["on"] is True from the moment task_class's revert starts (until
    it returns, or for good): the window in which a fault is injected."""
    original = task_class.revert

    @functools.wraps(original)  # TaskFlow maps the revert's arguments by its signature
    def revert(self, *args, **kwargs):
        state["on"] = True
        try:
            return original(self, *args, **kwargs)
        finally:
            if until_it_returns:
                state["on"] = False

    monkeypatch.setattr(task_class, "revert", revert)


@pytest.mark.parametrize("failures", [2, 10**6], ids=["blip", "down-for-the-whole-revert"])
def test_a_database_error_while_restoring_the_instance_state_still_decides_the_outcome(cloud, monkeypatch,
                                                                                       failures):
    """Item 4: a database error in the revert that puts the instance's state
    back used to stop TaskFlow's revert chain: no outcome, hosts reserved."""
    down = {"on": False, "left": failures, "refused": 0}
    original_session = Database.session

    def session(self):
        if down["on"] and down["left"] > 0:
            down["left"] -= 1
            down["refused"] += 1
            raise DatabaseUnavailable("database is unreachable: injected")
        return original_session(self)

    monkeypatch.setattr(Database, "session", session)
    _during_revert_of(monkeypatch, MarkInstanceMigrating, down)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "error", "boom")
    with pytest.raises(MigrationFailed):
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    m = cloud.migration(cloud.last_migration().id)
    assert m.status == "failed" and "boom" in m.error_reason, (m.status, m.error_reason)
    assert cloud.reservations() == []
    assert cloud.running_on() == ["a"]
    assert (cloud.instance().host, cloud.instance().state) == ("a", "running")
    assert down["refused"] >= 2  # the restore met the error (and was retried)


def test_audit_notes_that_cannot_be_written_stop_no_revert(cloud, monkeypatch):
    """Item 4: once the migration failed, no audit note can be written (the
    destination reverts note what they remove); every revert still runs and
    the outcome is recorded."""
    refused: list[str] = []
    failing = {"on": False}
    original_record_event = Database.record_event

    def record_event(self, migration_id, kind, name, state="", message=""):
        if failing["on"] and kind == "note":
            refused.append(message)
            raise DatabaseUnavailable("database is unreachable: injected")
        return original_record_event(self, migration_id, kind, name, state, message)

    monkeypatch.setattr(Database, "record_event", record_event)
    _during_revert_of(monkeypatch, MigrateDomain, failing, until_it_returns=False)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "error", "boom")
    with pytest.raises(MigrationFailed):
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert any(n.startswith("removed ") for n in refused), refused
    m = cloud.migration(cloud.last_migration().id)
    assert m.status == "failed" and "boom" in m.error_reason, (m.status, m.error_reason)
    assert cloud.reservations() == []
    assert cloud.running_on() == ["a"]
    assert (cloud.instance().host, cloud.instance().state) == ("a", "running")
    assert "vol-1" not in cloud.host_record("b")["secrets"] and "sg-web" not in cloud.host_record("b")["filters"]


# -- smaller defects ---------------------------------------------------------------------------------

def test_abort_of_a_queued_migration_ends_cancelled(cloud):
    held = services_for(cloud.settings).reservations
    assert held.try_reserve(999, "another-vm", [HostLimit("a", 1)]) is None
    settings = cloud.settings.replace(queue_timeout_s=20.0)
    timer = threading.Timer(0.8, lambda: livemig.abort(CTX, cloud.last_migration().id, settings=settings))
    timer.start()
    try:
        with pytest.raises(MigrationFailed):
            livemig.migrate(CTX, "vm1", "a", "b", settings=settings)
    finally:
        timer.join()
        held.release(999, ["a"])
    m = cloud.migration(cloud.last_migration().id)
    assert m.status == "cancelled", (m.status, m.error_reason)
    assert cloud.running_on() == ["a"]


def test_followed_job_records_downtime_and_fresh_final_figures(cloud, mig):
    _prepare_destination(cloud, mig)
    cloud.driver.update_host(cloud.uri("a"), migration_seconds=1.0)
    cloud.driver._start_migration(cloud.uri("a"), cloud.uri("b"), cloud.vm)  # as a dead controller left it
    make(MigrateDomain, cloud, "migrate-domain").execute(**mig)
    m = cloud.migration(mig["migration_id"])
    assert cloud.running_on() == ["b"]
    assert m.downtime_ms == 25
    assert m.memory_remaining == 0 and m.iteration == 3 and m.progress == 1.0
    with database_for(cloud.settings.database_url).session() as s:
        notes = [e.message for e in s.scalars(sa.select(Event).where(Event.migration_id == m.id))]
    assert not any("took 0 ms" in n for n in notes)


def test_followed_job_times_out_on_the_jobs_own_clock(cloud, mig):
    settings = cloud.settings.replace(completion_timeout_min_s=5.0, completion_timeout_s_per_gib=0.0)
    _prepare_destination(cloud, mig)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "hang")
    cloud.driver._start_migration(cloud.uri("a"), cloud.uri("b"), cloud.vm)
    with cloud.driver.world(cloud.uri("a")) as (world, path):
        world.host(path)["domains"][cloud.vm]["job"]["started"] -= 30  # started 30 s ago
        world.touch(path)
    started = time.monotonic()
    with pytest.raises(MigrationTimedOut):
        MigrateDomain(services_for(settings), name="migrate-domain").execute(**mig)
    assert time.monotonic() - started < 2.5
    assert cloud.running_on() == ["a"] and cloud.vm not in cloud.domains_on("b")


class _Dom:
    """A libvirt domain running a job that is not a migration (a backup)."""

    def __init__(self, operation: int):
        self.operation = operation
        self.aborted = False

    def jobStats(self, flags=0):
        return {"type": 2, "operation": self.operation}

    def jobInfo(self):
        return [2] + [0] * 11

    def abortJob(self):
        self.aborted = True


def test_libvirt_abort_leaves_a_backup_job_alone(monkeypatch):
    libvirt = pytest.importorskip("libvirt")
    from livemig.drivers.libvirt_driver import LibvirtDriver

    driver = LibvirtDriver.__new__(LibvirtDriver)  # no connection: the domain is a stand-in
    backup = _Dom(libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP)
    migration = _Dom(libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT)
    for dom, expected in ((backup, False), (migration, True)):
        monkeypatch.setattr(driver, "_call", lambda uri, what, fn, *a: fn(None, *a), raising=False)
        monkeypatch.setattr(driver, "_lookup", lambda conn, uuid, dom=dom: dom, raising=False)
        assert driver.abort_migration("qemu+tcp://127.0.0.1:1/system", "u") is expected
        assert dom.aborted is expected


def test_followed_job_keeps_its_downtime_schedule(cloud, mig):
    # 256 MiB guest: a step every 4 s, 100 -> 400 ms in 4 steps.
    settings = cloud.settings.replace(max_downtime_ms=400, downtime_steps=4, downtime_step_delay_s_per_gib=16.0)
    _prepare_destination(cloud, mig)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "hang")
    cloud.driver._start_migration(cloud.uri("a"), cloud.uri("b"), cloud.vm)
    with cloud.driver.world(cloud.uri("a")) as (world, path):
        world.host(path)["domains"][cloud.vm]["job"]["started"] -= 13  # 13 s into the job
        world.touch(path)
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            MigrateDomain(services_for(settings), name="migrate-domain").execute(**mig)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    worker = threading.Thread(target=follow)
    worker.start()
    time.sleep(1.0)
    allowed = cloud.domains_on("a")[cloud.vm]["job"].get("max_downtime_ms")
    livemig.abort(CTX, mig["migration_id"], settings=settings)
    worker.join(timeout=30)
    assert allowed == 325  # the schedule's step for 12-16 s into the job
    assert errors and cloud.running_on() == ["a"]
