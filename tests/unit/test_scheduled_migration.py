"""Migrations whose destination livemig chooses, on the fake driver: the
spread-best host is chosen; a destination that fails its precheck, its
preparation or the migration itself (the VM intact on its source) is undone
and the next host is tried; a named destination is never retried; when
every host fails, every attempt's reason is recorded; a runner killed in the
middle of the second attempt is resumed to the end on that attempt's host."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa

import livemig
from livemig.errors import MigrationFailed, NoValidHost
from livemig.persistence.database import database_for
from livemig.persistence.models import Event, Leftover, Migration
from livemig.tasks.cleanup import UpdateInstanceHost
from tests.fakecloud import FakeCloud

CTX = livemig.admin_context("tests")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def fleet(tmp_path, settings) -> FakeCloud:
    """vm1 on a; b, c, d empty but b holds a 24 GiB guest, so spread ranks
    c, d (tie, by name), then b."""
    cloud = FakeCloud.build(tmp_path, settings, hosts=("a", "b", "c", "d"), migration_seconds=0.05)
    cloud.driver.create_domain(cloud.uri("b"), "big", memory_mb=24576, vcpus=2)
    livemig.sync_hosts(CTX, settings=settings)
    return cloud


def attempts(cloud: FakeCloud, migration_id: int) -> list[tuple[str, str]]:
    return [(a["host"], a["outcome"]) for a in cloud.migration(migration_id).attempts]


def notes(cloud: FakeCloud, migration_id: int, name: str) -> list[str]:
    with database_for(cloud.settings.database_url).session() as s:
        return [e.message for e in s.scalars(sa.select(Event).where(
            Event.migration_id == migration_id, Event.kind == "note", Event.name == name).order_by(Event.id))]


def assert_clean(cloud: FakeCloud, *hosts: str) -> None:
    """Nothing of vm1's migration is left on these hosts."""
    for host in hosts:
        record = cloud.host_record(host)
        assert cloud.vm not in record["domains"], host
        assert record["filters"] == {} and record["secrets"] == {}, host
    assert cloud.reservations() == []


def test_the_spread_best_host_is_chosen_and_recorded(fleet):
    selection = livemig.choose_destination("vm1", settings=fleet.settings)
    assert (selection.chosen, selection.ranked) == ("c", ("c", "d", "b"))
    assert selection.explain() == ["a: source-host: vm1 runs there"]
    view = livemig.migrate(CTX, "vm1", settings=fleet.settings)
    assert (view.source_host, view.dest_host, view.status) == ("a", "c", "completed")
    assert fleet.running_on() == ["c"] and fleet.instance().host == "c"
    assert view.scheduled and attempts(fleet, view.id) == [("c", "completed")]
    assert_clean(fleet, "b", "d")


def test_pack_chooses_the_fullest_host_that_fits(fleet):
    view = livemig.migrate(CTX, "vm1", weigher="pack", settings=fleet.settings)
    assert view.dest_host == "b" and fleet.running_on() == ["b"]


def test_a_destination_failing_its_precheck_is_replaced_by_the_next(fleet):
    view = livemig.create_migration(CTX, "vm1", settings=fleet.settings)
    assert view.dest_host == "c"
    # c stops answering its facts after the request was accepted (a queued job).
    fleet.driver.inject_fault(fleet.uri("c"), "host_facts", "error", "libvirtd restarting")
    done = livemig.resume(CTX, view.id, settings=fleet.settings)
    assert (done.status, done.dest_host) == ("completed", "d")
    assert attempts(fleet, view.id) == [("c", "failed"), ("d", "completed")]
    first = fleet.migration(view.id).attempts[0]
    assert "check-migration-prerequisites" in first["reason"] and "libvirtd restarting" in first["reason"]
    assert fleet.running_on() == ["d"]
    assert_clean(fleet, "b", "c")
    trail = notes(fleet, view.id, "choose-destination")
    assert trail[0].startswith("attempt 1: c (chosen by the scheduler (spread))")
    assert trail[1].startswith("attempt 1 on c failed: check-migration-prerequisites")
    assert trail[2].startswith("attempt 2: d (the next best after c (spread))")


def test_a_destination_failing_its_preparation_is_undone_then_the_next_is_used(fleet):
    fleet.driver.inject_fault(fleet.uri("c"), "network_present", "error", "bridge lookup failed")
    view = livemig.migrate(CTX, "vm1", settings=fleet.settings)
    assert (view.status, view.dest_host) == ("completed", "d")
    assert attempts(fleet, view.id) == [("c", "failed"), ("d", "completed")]
    # The secret attempt 1 defined on c was removed by its revert.
    assert fleet.driver.call_count(fleet.uri("c"), "copy_secret") == 1
    assert fleet.driver.call_count(fleet.uri("c"), "undefine_secret") == 1
    assert fleet.running_on() == ["d"] and fleet.instance().host == "d"
    assert_clean(fleet, "b", "c")


def test_a_migration_failing_before_switchover_is_retried_elsewhere(fleet):
    # c's daemon dies mid-migration: the VM stays on a, an incoming copy is orphaned on c.
    fleet.driver.inject_fault(fleet.uri("a"), "migrate", "dest-died")
    view = livemig.migrate(CTX, "vm1", settings=fleet.settings)
    assert (view.status, view.dest_host) == ("completed", "d")
    assert attempts(fleet, view.id) == [("c", "failed"), ("d", "completed")]
    assert "client socket is closed" in fleet.migration(view.id).attempts[0]["reason"]
    assert fleet.driver.call_count(fleet.uri("a"), "migrate") == 2
    assert fleet.running_on() == ["d"]
    assert_clean(fleet, "b", "c")  # the orphan on c was destroyed before d was tried


def test_a_named_destination_is_never_retried(fleet):
    fleet.driver.inject_fault(fleet.uri("c"), "network_present", "error", "bridge lookup failed", times=2)
    for call in (lambda: livemig.migrate(CTX, "vm1", "a", "c", settings=fleet.settings),
                 lambda: livemig.migrate(CTX, "vm1", to="c", settings=fleet.settings)):
        with pytest.raises(MigrationFailed) as info:
            call()
        migration = fleet.migration(info.value.migration_id)
        assert migration.status == "failed" and not migration.scheduled
        assert attempts(fleet, migration.id) == [("c", "failed")]
        assert "bridge lookup failed" in migration.error_reason
        assert notes(fleet, migration.id, "retry-on-next-destination") == [
            "not retried: the destination was given explicitly"]
        assert fleet.running_on() == ["a"]
        assert_clean(fleet, "b", "c", "d")


def test_every_host_failing_ends_failed_with_every_attempts_reason(fleet):
    for host in ("b", "c", "d"):
        fleet.driver.inject_fault(fleet.uri(host), "network_present", "error", f"no bridge on {host}")
    with pytest.raises(MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", settings=fleet.settings)
    migration = fleet.migration(info.value.migration_id)
    assert migration.status == "failed"
    assert attempts(fleet, migration.id) == [("c", "failed"), ("d", "failed"), ("b", "failed")]
    reason = migration.error_reason
    for n, host in enumerate(("c", "d", "b"), start=1):
        assert f"attempt {n} on {host}: set-up-network-on-destination" in reason and f"no bridge on {host}" in reason
    assert "the VM keeps running on a" in reason
    assert migration.dest_host == "b"  # the last attempt's
    assert fleet.running_on() == ["a"] and fleet.instance().host == "a" and fleet.instance().state == "running"
    assert_clean(fleet, "b", "c", "d")


def test_retries_stop_at_max_retries(fleet):
    settings = fleet.settings.replace(max_retries=1)
    for host in ("b", "c", "d"):
        fleet.driver.inject_fault(fleet.uri(host), "network_present", "error", f"no bridge on {host}")
    with pytest.raises(MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", settings=settings)
    assert attempts(fleet, info.value.migration_id) == [("c", "failed"), ("d", "failed")]
    assert notes(fleet, info.value.migration_id, "retry-on-next-destination") == [
        "not retried: 2 attempts made (max_retries 1)"]
    assert fleet.running_on() == ["a"]


def test_no_retry_once_the_vm_has_moved(fleet, monkeypatch):
    def fail(self, *args, **kwargs):
        raise RuntimeError("inventory write failed")

    fail.__signature__ = __import__("inspect").signature(UpdateInstanceHost.execute)
    monkeypatch.setattr(UpdateInstanceHost, "execute", fail)
    with pytest.raises(MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", settings=fleet.settings)
    migration = fleet.migration(info.value.migration_id)
    # Past switchover: the VM stays where it arrived, recorded there, no other host touched.
    assert attempts(fleet, migration.id) == [("c", "failed")]
    assert "update-instance-host: inventory write failed" in migration.error_reason
    # The failure is outside the retried part of the flow: the retry controller is not even asked.
    assert notes(fleet, migration.id, "retry-on-next-destination") == []
    assert fleet.running_on() == ["c"] and fleet.instance().host == "c"
    assert fleet.driver.call_count(fleet.uri("a"), "migrate") == 1
    assert_clean(fleet, "b", "d")


def test_a_refusal_of_every_host_says_why_per_host_and_records_nothing(fleet):
    for host in ("b", "c", "d"):
        fleet.driver.update_host(fleet.uri(host), bridges=["br-other"])
    livemig.sync_hosts(CTX, settings=fleet.settings)
    with pytest.raises(NoValidHost) as info:
        livemig.migrate(CTX, "vm1", settings=fleet.settings)
    assert str(info.value) == ("no host can take vm1: a: source-host: vm1 runs there; b: networks: lacks br-guests; "
                               "c: networks: lacks br-guests; d: networks: lacks br-guests")
    with database_for(fleet.settings.database_url).session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Migration)) == 0


def test_a_host_failing_the_precheck_at_request_time_is_skipped_and_said(fleet):
    fleet.driver.update_host(fleet.uri("c"), cpu_models=["qemu64", "Skylake-Server"][1:])  # lacks qemu64
    selection = livemig.choose_destination("vm1", settings=fleet.settings)
    assert selection.chosen == "d"
    assert ("c: precheck: c cannot run the CPU of instance vm1: CPU model qemu64 is not supported by c"
            in selection.explain())
    view = livemig.migrate(CTX, "vm1", settings=fleet.settings)
    assert view.dest_host == "d" and attempts(fleet, view.id) == [("d", "completed")]


def test_a_given_source_must_be_the_inventorys(fleet):
    with pytest.raises(livemig.LivemigError, match="instance vm1 runs on a, not on b"):
        livemig.migrate(CTX, "vm1", "b", settings=fleet.settings)
    view = livemig.migrate(CTX, "vm1", "a", settings=fleet.settings)
    assert view.dest_host == "c"


# -- resumed in the middle of the second attempt ---------------------------------------------------------

def _env(settings):
    env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=ROOT, LIVEMIG_POLL_INTERVAL_S="0.02")
    env.pop("LIVEMIG_DATABASE_URL", None)
    return env


def _die_in(settings, migration_id, step, when):
    proc = subprocess.run([sys.executable, "-m", "tests.helpers_die", settings.data_dir, str(migration_id), step,
                           when], cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _resume_cli(settings, migration_id):
    return subprocess.run([sys.executable, "-m", "livemig.cli", "migration", "resume", str(migration_id), "-q"],
                          cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=60)


def test_killed_while_the_second_attempt_migrates_then_resumed(tmp_path, settings):
    cloud = FakeCloud.build(tmp_path, settings, migration_seconds=0.8)  # a, b, c
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "dest-died")  # attempt 1 (b) fails at once
    view = livemig.create_migration(CTX, "vm1", settings=settings)
    assert view.dest_host == "b"
    # The runner is SIGKILLed while the hypervisor job of attempt 2 (to c) runs.
    _die_in(settings, view.id, "migrate-domain", "during")
    assert attempts(cloud, view.id) == [("b", "failed"), ("c", "running")]
    assert cloud.migration(view.id).dest_host == "c"
    proc = _resume_cli(settings, view.id)
    assert proc.returncode == 0, proc.stderr
    assert f"migration {view.id}: vm1 a -> c completed" in proc.stdout
    assert attempts(cloud, view.id) == [("b", "failed"), ("c", "completed")]
    assert cloud.running_on() == ["c"] and cloud.instance().host == "c"
    # The resumed runner followed attempt 2's job: two hypervisor migrations in all, not three.
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 2
    assert cloud.vm not in cloud.domains_on("b") and cloud.host_record("b")["secrets"] == {}
    assert cloud.reservations() == []
    assert len(notes(cloud, view.id, "choose-destination")) == 3  # 1 on b, its failure, 2 on c: none twice


def test_killed_while_the_first_attempt_reverts_then_resumed_on_the_next_host(tmp_path, settings):
    cloud = FakeCloud.build(tmp_path, settings)  # a, b, c
    cloud.driver.inject_fault(cloud.uri("b"), "network_present", "error", "bridge lookup failed")
    view = livemig.create_migration(CTX, "vm1", settings=settings)
    # Dies right after attempt 1's secret on b was removed by its revert.
    _die_in(settings, view.id, "set-up-volumes-on-destination", "revert")
    proc = _resume_cli(settings, view.id)
    assert proc.returncode == 0, proc.stderr
    assert attempts(cloud, view.id) == [("b", "failed"), ("c", "completed")]
    assert cloud.running_on() == ["c"] and cloud.instance().host == "c"
    assert cloud.vm not in cloud.domains_on("b") and cloud.host_record("b")["secrets"] == {}
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1
    assert cloud.reservations() == []
    with database_for(settings.database_url).session() as s:
        assert s.scalars(sa.select(Leftover)).all() == []


# -- what a fleet operation asks for ------------------------------------------------------------------

def test_candidates_limit_the_choice_and_the_retries(fleet):
    for host in ("b", "c"):
        fleet.driver.inject_fault(fleet.uri(host), "network_present", "error", f"no bridge on {host}")
    with pytest.raises(MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", candidates=["c", "b"], settings=fleet.settings)
    # c, then b; d, the better host after c, is no candidate: never tried.
    migration = fleet.migration(info.value.migration_id)
    assert attempts(fleet, migration.id) == [("c", "failed"), ("b", "failed")]
    assert "then choose-destination: no other host can take it: " in migration.error_reason
    assert " d: " not in migration.error_reason  # d is not even mentioned
    assert fleet.driver.call_count(fleet.uri("d"), "copy_secret") == 0
    assert fleet.running_on() == ["a"]
    assert_clean(fleet, "b", "c", "d")


def test_a_planned_destination_is_checked_and_retried_elsewhere(fleet):
    fleet.driver.inject_fault(fleet.uri("b"), "network_present", "error", "no bridge on b")
    view = livemig.migrate(CTX, "vm1", dest="b", retry_elsewhere=True, operation_id=7, settings=fleet.settings)
    migration = fleet.migration(view.id)
    assert migration.scheduled and migration.operation_id == 7
    assert attempts(fleet, view.id) == [("b", "failed"), ("c", "completed")]
    assert fleet.running_on() == ["c"]
    # A planned destination the scheduler refuses is refused at once, nothing recorded.
    fleet.driver.update_host(fleet.uri("d"), bridges=["br-other"])
    livemig.sync_hosts(CTX, settings=fleet.settings)
    with pytest.raises(NoValidHost, match="no host can take vm1: d: networks: lacks br-guests"):
        livemig.migrate(CTX, "vm1", dest="d", retry_elsewhere=True, settings=fleet.settings)
    with pytest.raises(livemig.LivemigError, match="host 'zz' is not in the inventory"):
        livemig.migrate(CTX, "vm1", candidates=["zz"], settings=fleet.settings)


def test_a_host_in_maintenance_takes_no_migration_named_or_chosen(fleet):
    from livemig.persistence.models import Host

    with database_for(fleet.settings.database_url).session() as s:
        s.get(Host, "c").maintenance, s.get(Host, "c").maintenance_reason = True, "drain 3"
    with pytest.raises(livemig.LivemigError, match=r"host c is in maintenance \(drain 3\): no new placements"):
        livemig.migrate(CTX, "vm1", "a", "c", settings=fleet.settings)
    selection = livemig.choose_destination("vm1", settings=fleet.settings)
    assert selection.chosen == "d" and "c: maintenance: host is in maintenance (drain 3)" in selection.explain()
    # Moving off a host in maintenance is what maintenance is for.
    with database_for(fleet.settings.database_url).session() as s:
        s.get(Host, "a").maintenance = True
    assert livemig.migrate(CTX, "vm1", settings=fleet.settings).dest_host == "d"


# -- the two retry atoms, called directly --------------------------------------------------------------

def _task_fixture(fleet, **row):
    from livemig.services import services_for

    view = livemig.create_migration(CTX, "vm1", settings=fleet.settings)
    with database_for(fleet.settings.database_url).session() as s:
        migration = s.get(Migration, view.id)
        for name, value in row.items():
            setattr(migration, name, value)
    return services_for(fleet.settings), view.id


def test_choose_destination_reruns_the_running_attempt_and_refuses_after_an_abort(fleet):
    from livemig.tasks.attempts import ChooseDestination
    from livemig.tasks.lifecycle import MigrationCancelled

    services, mid = _task_fixture(fleet)
    task = ChooseDestination(services, name="choose-destination")
    assert task.execute(mid, fleet.vm, "a", "c") == "c"
    assert task.execute(mid, fleet.vm, "a", "c") == "c"  # re-run after a crash: the same attempt
    assert attempts(fleet, mid) == [("c", "running")]
    task.revert(None, mid, flow_failures={})
    assert attempts(fleet, mid) == [("c", "failed")]
    assert task.execute(mid, fleet.vm, "a", "c") == "d"
    task.revert(None, mid, flow_failures={})
    with database_for(fleet.settings.database_url).session() as s:
        s.get(Migration, mid).abort_requested = True
    with pytest.raises(MigrationCancelled, match="cancelled after attempt 2"):
        task.execute(mid, fleet.vm, "a", "c")
    assert attempts(fleet, mid) == [("c", "failed"), ("d", "failed")]


def test_choose_destination_never_moves_on_while_a_copy_is_left_on_a_tried_host(fleet):
    from livemig.tasks.attempts import ChooseDestination, RetryUnsafe

    services, mid = _task_fixture(fleet, attempts=[{"attempt": 1, "host": "c", "outcome": "failed"}])
    # An incoming copy its revert could not destroy is still on c.
    fleet.driver.create_domain(fleet.uri("c"), "vm1", uuid=fleet.vm, state="paused")
    with pytest.raises(RetryUnsafe, match="the VM is not only on a"):
        ChooseDestination(services, name="choose-destination").execute(mid, fleet.vm, "a", "c")
    assert attempts(fleet, mid) == [("c", "failed")]


@pytest.mark.parametrize("row,world,expected", [
    ({}, None, "RETRY"),
    ({"scheduled": False}, None, "the destination was given explicitly"),
    ({"abort_requested": True}, None, "an abort was requested"),
    ({"status": "post-migrating"}, None, "past switchover"),
    ({"attempts": [{"host": h, "outcome": "failed"} for h in "cdb"] + [{"host": "c", "outcome": "running"}]},
     None, "4 attempts made (max_retries 3)"),
    ({}, "paused", "the VM is not intact on a"),
    ({}, "copy-running", "the VM is not intact on a"),
])
def test_the_retry_decision(fleet, row, world, expected):
    from taskflow import retry

    from livemig.tasks.attempts import RetryOnNextDestination

    services, mid = _task_fixture(fleet, **row)
    if world == "paused":
        fleet.driver.suspend_domain(fleet.uri("a"), fleet.vm)
    elif world == "copy-running":
        fleet.driver.create_domain(fleet.uri("c"), "vm1", uuid=fleet.vm)
    decision, why = RetryOnNextDestination(services, name="r")._decide([], mid, fleet.vm, "a")
    if expected == "RETRY":
        assert decision == retry.RETRY
    else:
        assert decision == retry.REVERT_ALL and expected in why


# -- TaskFlow behaviour the retried subflow relies on (public API, pinned 6.5) ------------------------

def test_taskflow_injected_values_shadow_a_tasks_result_and_rebind_also_applies_to_revert():
    """Why each attempt's host has its own name (attempt_dest_host): a task
    providing `dest_host` would be ignored next to the injected one. And the
    rebinding reaches revert too, so an attempt's reverts undo its own host."""
    from taskflow import engines, task
    from taskflow.patterns import linear_flow

    seen: list[tuple[str, str]] = []

    class Provide(task.Task):
        default_provides = "dest_host"

        def execute(self):
            return "from-task"

    class Use(task.Task):
        def execute(self, dest_host):
            seen.append(("execute", dest_host))

        def revert(self, dest_host, **kwargs):
            seen.append(("revert", dest_host))

    class Fail(task.Task):
        def execute(self):
            raise RuntimeError("fail")

    flow = linear_flow.Flow("f").add(Provide(), Use(name="plain"), Use(name="rebound", rebind={"dest_host": "other"}),
                                     Fail())
    with pytest.raises(RuntimeError):
        engines.run(flow, store={"dest_host": "injected", "other": "attempt"})
    assert seen == [("execute", "injected"), ("execute", "attempt"), ("revert", "attempt"), ("revert", "injected")]


def test_taskflow_asks_a_retry_controller_with_its_execute_arguments_and_retries_the_subflow():
    from taskflow import engines, retry, task
    from taskflow.patterns import linear_flow

    asked: list[int] = []
    runs: list[int] = []

    class Controller(retry.Retry):
        def execute(self, history, migration_id):
            return len(history) + 1

        def on_failure(self, history, migration_id):
            asked.append(migration_id)
            return retry.RETRY if len(history) < 2 else retry.REVERT_ALL

    class Attempt(task.Task):
        def execute(self, migration_id):
            runs.append(migration_id)
            if len(runs) < 2:
                raise RuntimeError("first attempt fails")

    inner = linear_flow.Flow("attempts", retry=Controller(name="c")).add(Attempt())
    engines.run(linear_flow.Flow("f").add(inner), store={"migration_id": 7})
    assert asked == [7] and runs == [7, 7]
