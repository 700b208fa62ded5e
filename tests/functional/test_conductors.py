"""Many controllers: real ZooKeeper, real conductor processes, SIGKILL and
SIGSTOP, host reservations under load (fake hypervisor)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import sqlalchemy as sa

import livemig
from livemig.persistence.database import database_for
from livemig.persistence.models import Event, Migration
from livemig.services import services_for
from tests.fakecloud import FakeCloud
from tests.helpers_freeze import ROOT, Conductors, flow_rows, freeze, migration_fields
from tests.unit.test_flow_contract import EXPECTED_STEPS

CTX = livemig.admin_context("tests")


@pytest.fixture
def zk_settings(settings, zookeeper):
    return settings.replace(zookeeper_hosts=zookeeper.hosts, zookeeper_session_timeout=2.0,
                            zookeeper_root=f"/livemig-test-{uuid.uuid4().hex[:8]}", queue_timeout_s=120.0,
                            poll_interval_s=0.05)


@pytest.fixture
def conductors(zk_settings):
    os.makedirs(zk_settings.data_dir, exist_ok=True)
    c = Conductors(zk_settings)
    yield c
    c.stop_all()


def wait_finished(settings, ids, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = [livemig.show_migration(i, settings=settings) for i in ids]
        if all(v.status in ("completed", "failed", "cancelled", "error") for v in views):
            return views
        time.sleep(0.1)
    raise TimeoutError(f"migrations {ids} did not finish: {[v.status for v in views]}")


def wait_running(settings, migration_id, timeout=30.0):
    deadline = time.monotonic() + timeout
    while livemig.show_migration(migration_id, settings=settings).status != "running":
        assert time.monotonic() < deadline, f"migration {migration_id} never started running"
        time.sleep(0.05)


def step_events(settings, migration_id, state=None):
    with database_for(settings.database_url).session() as s:
        q = sa.select(Event).where(Event.migration_id == migration_id, Event.kind == "step").order_by(Event.id)
        rows = list(s.scalars(q))
    return [e for e in rows if state is None or e.state == state]


def holders(settings, host):
    return services_for(settings).reservations.holders(host)


KILL_CASES = [(s, "after") for s in EXPECTED_STEPS[1:]] + [("migrate-domain", "during")]


@pytest.mark.parametrize("step,when", KILL_CASES, ids=[f"{s}-{w}" for s, w in KILL_CASES])
def test_conductor_killed_in_each_step_another_finishes(tmp_path, zk_settings, conductors, step, when):
    cloud = FakeCloud.build(tmp_path, zk_settings, migration_seconds=1.0)
    victim = conductors.start("victim", step, when)
    view = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=zk_settings)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    conductors.start("rescuer")
    (done,) = wait_finished(zk_settings, [view.id])
    assert done.status == "completed", done.error_reason
    assert cloud.running_on() == ["b"] and cloud.instance().host == "b"
    # Each completed step's side effect happened once.
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1
    assert cloud.driver.call_count(cloud.uri("b"), "copy_secret") == 1
    assert cloud.driver.call_count(cloud.uri("b"), "define_filter") == 1
    # Killed after the last step, the outcome was already recorded: an
    # outcome is final, and the rescuer discards the job, running nothing.
    ended = (step, when) == ("mark-migration-completed", "after")
    expected = EXPECTED_STEPS[:-1] if ended else EXPECTED_STEPS
    deadline = time.monotonic() + 30
    while [e.name for e in step_events(zk_settings, view.id, "SUCCESS")] != expected:
        assert time.monotonic() < deadline, [e.name for e in step_events(zk_settings, view.id, "SUCCESS")]
        time.sleep(0.1)
    # The rescuer (another process) ran the rest.
    controllers = {e.controller for e in step_events(zk_settings, view.id)}
    assert len(controllers) == (1 if ended else 2)
    if ended:
        deadline = time.monotonic() + 30
        while not [e for e in livemig.show_migration(view.id, settings=zk_settings).events
                   if e.kind == "note" and e.state == "discarded"]:
            assert time.monotonic() < deadline, "the rescuer never discarded the job"
            time.sleep(0.1)
    assert holders(zk_settings, "a") == [] and holders(zk_settings, "b") == []


def test_frozen_conductor_is_fenced_after_takeover(tmp_path, zk_settings, conductors):
    cloud = FakeCloud.build(tmp_path, zk_settings, migration_seconds=6.0)
    frozen = conductors.start("frozen")
    view = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=zk_settings)
    wait_running(zk_settings, view.id)
    freeze(frozen, zk_settings, cloud.directory.glob(".*.lock"))
    frozen_at = time.monotonic()
    conductors.start("rescuer")
    (done,) = wait_finished(zk_settings, [view.id])
    assert done.status == "completed"
    assert time.monotonic() - frozen_at > zk_settings.zookeeper_session_timeout
    frozen.send_signal(signal.SIGCONT)
    time.sleep(4.0)  # let it wake, finish its step and notice it lost the claim
    frozen_id = f"{os.uname().nodename}:{frozen.pid}"
    after_freeze = [e for e in step_events(zk_settings, view.id) if e.controller == frozen_id
                    and EXPECTED_STEPS.index(e.name) > EXPECTED_STEPS.index("migrate-domain")]
    assert after_freeze == [], [(e.name, e.state) for e in after_freeze]
    assert livemig.show_migration(view.id, settings=zk_settings).status == "completed"
    assert cloud.running_on() == ["b"]
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1


def test_frozen_conductor_changes_nothing_after_it_wakes(tmp_path, zk_settings, conductors):
    """SIGSTOP a conductor mid-migration past its session timeout; another
    takes over (a newer claim epoch) and finishes; SIGCONT: the stale one
    writes nothing, not its flow's row nor an atom's, not an event."""
    cloud = FakeCloud.build(tmp_path, zk_settings, migration_seconds=6.0)
    frozen = conductors.start("frozen")
    view = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=zk_settings)
    wait_running(zk_settings, view.id)
    time.sleep(0.5)  # into the hypervisor job
    freeze(frozen, zk_settings, cloud.directory.glob(".*.lock"))
    conductors.start("rescuer")
    (done,) = wait_finished(zk_settings, [view.id])
    assert done.status == "completed", done.error_reason
    deadline = time.monotonic() + 30
    while flow_rows(zk_settings, view.id)[0][0] != "SUCCESS":
        assert time.monotonic() < deadline, "the rescuer's flow never ended"
        time.sleep(0.1)
    flow_before = flow_rows(zk_settings, view.id)
    row_before = migration_fields(zk_settings, view.id)
    assert row_before[3] == 2  # the frozen conductor's claim, then the rescuer's
    with database_for(zk_settings.database_url).session() as s:
        last_event = s.scalar(sa.select(sa.func.max(Event.id)))
    frozen.send_signal(signal.SIGCONT)
    time.sleep(8.0)  # its hypervisor job's remaining seconds, its step's end, and more
    assert flow_rows(zk_settings, view.id) == flow_before
    assert migration_fields(zk_settings, view.id) == row_before
    with database_for(zk_settings.database_url).session() as s:
        later = list(s.scalars(sa.select(Event).where(Event.id > last_event)))
    assert later == [], [(e.kind, e.name, e.state, e.controller) for e in later]
    assert cloud.running_on() == ["b"] and cloud.instance().host == "b"
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1
    assert holders(zk_settings, "a") == [] and holders(zk_settings, "b") == []


def test_reposted_job_of_a_failed_migration_runs_no_step(tmp_path, zk_settings, conductors):
    """A re-posted logbook of a migration recorded failed used to run again
    from the start (TaskFlow resets a REVERTED flow) and end completed."""
    from livemig.jobs import post_migration_job

    cloud = FakeCloud.build(tmp_path, zk_settings)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "dest-died")
    conductors.start("c1")
    with pytest.raises(livemig.MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", "a", "b", settings=zk_settings)
    migration_id = info.value.migration_id
    steps = len(step_events(zk_settings, migration_id))
    services = services_for(zk_settings)
    job_id = post_migration_job(services, migration_id)
    from livemig.jobs import job_on_board
    deadline = time.monotonic() + 20
    while job_on_board(services, job_id):
        assert time.monotonic() < deadline, "the re-posted job was never taken off the board"
        time.sleep(0.1)
    time.sleep(1.0)
    assert cloud.migration(migration_id).status == "failed"
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1
    assert cloud.running_on() == ["a"] and cloud.instance().host == "a"
    assert len(step_events(zk_settings, migration_id)) == steps
    notes = [e.message for e in livemig.show_migration(migration_id, settings=zk_settings).events
             if e.kind == "note" and e.state == "discarded"]
    assert len(notes) == 1 and "already ended (failed)" in notes[0]
    with pytest.raises(livemig.errors.Conflict, match="already ended"):
        livemig.resume(CTX, migration_id, settings=zk_settings)


def test_engine_build_blip_hands_the_job_back(tmp_path, zk_settings, conductors):
    cloud = FakeCloud.build(tmp_path, zk_settings)
    conductors.start("blippy", env={"LIVEMIG_TEST_FACTORY_FAULT": "transient:2"})
    view = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=zk_settings)
    (done,) = wait_finished(zk_settings, [view.id], timeout=60)
    assert done.status == "completed", done.error_reason
    assert cloud.running_on() == ["b"] and cloud.instance().host == "b"
    log = open(os.path.join(zk_settings.data_dir, "blippy.log")).read()
    assert log.count("handing it back") == 2, log


def test_unbuildable_job_ends_its_migration_with_the_reason(tmp_path, zk_settings, conductors):
    """A conductor that cannot rebuild a mid-flight migration's flow (here its
    factory refuses the job's arguments) ends it instead of trashing the job
    and leaving the instance `migrating` and its hosts reserved."""
    cloud = FakeCloud.build(tmp_path, zk_settings)
    victim = conductors.start("victim", "mark-instance-migrating", "after")
    view = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=zk_settings)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert cloud.instance().state == "migrating" and holders(zk_settings, "a") == [view.id]
    conductors.start("strict", env={"LIVEMIG_TEST_FACTORY_FAULT": "permanent"})
    (done,) = wait_finished(zk_settings, [view.id], timeout=60)
    assert done.status == "failed"
    assert "cannot run its flow" in done.error_reason and "injected_by_test" in done.error_reason
    assert "the VM runs on a" in done.error_reason
    assert cloud.running_on() == ["a"]
    assert cloud.instance().host == "a" and cloud.instance().state == "running"
    assert holders(zk_settings, "a") == [] and holders(zk_settings, "b") == []
    from livemig.jobs import job_on_board
    deadline = time.monotonic() + 10
    while job_on_board(services_for(zk_settings), cloud.migration(view.id).job_id):
        assert time.monotonic() < deadline, "the job stayed on the board"
        time.sleep(0.1)


def test_migrate_gives_up_on_a_job_no_conductor_claims(tmp_path, zk_settings):
    settings = zk_settings.replace(unclaimed_job_timeout_s=1.5)
    cloud = FakeCloud.build(tmp_path, settings)
    started = time.monotonic()
    with pytest.raises(livemig.errors.QueueTimeout) as info:
        livemig.migrate(CTX, "vm1", "a", "b", settings=settings)
    assert 1.5 <= time.monotonic() - started < 10
    migration_id = cloud.last_migration().id
    assert str(info.value).startswith(f"no conductor has claimed migration {migration_id} in 1.5 s; "
                                      f"is one running?")
    assert "stays queued" in str(info.value)
    # It stays queued, on the board, for a conductor to come.
    assert cloud.migration(migration_id).status == "queued"
    from livemig.jobs import job_on_board
    assert job_on_board(services_for(settings), cloud.migration(migration_id).job_id)
    assert cloud.running_on() == ["a"]
    livemig.close()


def test_twenty_migrations_four_hosts_two_conductors_never_overlap(tmp_path, zk_settings, conductors):
    hosts = ("h1", "h2", "h3", "h4")
    cloud = FakeCloud.build(tmp_path, zk_settings, hosts=hosts, migration_seconds=0.2)
    names = []
    for i, host in enumerate(hosts):
        for j in range(5 if i else 4):  # vm1 of the fake cloud is already on h1
            name = f"v{i}{j}"
            cloud.driver.create_domain(cloud.uri(host), name, memory_mb=256)
            names.append((name, host))
    livemig.sync_hosts(CTX, settings=zk_settings)
    names.append(("vm1", "h1"))
    ids = []
    for name, host in names:
        dest = hosts[(hosts.index(host) + 1) % 4]
        ids.append(livemig.migrate(CTX, name, host, dest, wait=False, settings=zk_settings).id)
    conductors.start("c1")
    conductors.start("c2")
    views = wait_finished(zk_settings, ids, timeout=240)
    assert [v.status for v in views] == ["completed"] * 20
    busy: dict[str, list[tuple]] = {h: [] for h in hosts}
    for v in views:
        events = step_events(zk_settings, v.id)
        start = next(e.at for e in events if e.name == "migrate-domain" and e.state == "RUNNING")
        end = next(e.at for e in events if e.name == "migrate-domain" and e.state == "SUCCESS")
        busy[v.source_host].append((start, end, v.id))
        busy[v.dest_host].append((start, end, v.id))
    for host, spans in busy.items():
        spans.sort()
        for (s1, e1, m1), (s2, e2, m2) in zip(spans, spans[1:]):
            assert e1 <= s2, f"{host}: migrations {m1} and {m2} overlap"
    assert all(holders(zk_settings, h) == [] for h in hosts)


def test_killed_controller_keeps_reservations_and_others_wait(tmp_path, zk_settings, conductors):
    cloud = FakeCloud.build(tmp_path, zk_settings, migration_seconds=3.0)
    vm2 = cloud.driver.create_domain(cloud.uri("c"), "vm2")
    livemig.sync_hosts(CTX, "c", settings=zk_settings)
    victim = conductors.start("victim", "migrate-domain", "during")
    first = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=zk_settings)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    time.sleep(zk_settings.zookeeper_session_timeout + 1.0)
    # The reservations belong to the migration, not to the dead process.
    assert holders(zk_settings, "a") == [first.id] and holders(zk_settings, "b") == [first.id]
    second = livemig.migrate(CTX, "vm2", "c", "b", wait=False, settings=zk_settings)
    conductors.start("c1")
    conductors.start("c2")
    v1, v2 = wait_finished(zk_settings, [first.id, second.id])
    assert (v1.status, v2.status) == ("completed", "completed")
    e1 = step_events(zk_settings, first.id)
    e2 = step_events(zk_settings, second.id)
    released = next(e.at for e in e1 if e.name == "release-hosts" and e.state == "RUNNING")
    started = next(e.at for e in e2 if e.name == "migrate-domain" and e.state == "RUNNING")
    assert released <= started
    assert cloud.running_on() == ["b"] and cloud.running_on(vm2) == ["b"]
    assert holders(zk_settings, "b") == []


def test_failed_job_is_consumed_and_its_outcome_recorded(tmp_path, zk_settings, conductors):
    cloud = FakeCloud.build(tmp_path, zk_settings)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "dest-died")
    conductors.start("c1")
    with pytest.raises(livemig.MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", "a", "b", settings=zk_settings)
    assert info.value.status == "failed"
    assert cloud.running_on() == ["a"] and cloud.domains_on("b") == {}
    from livemig.jobs import open_board
    board = open_board(services_for(zk_settings))
    try:
        deadline = time.monotonic() + 10
        while list(board.iterjobs(ensure_fresh=True)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(board.iterjobs(ensure_fresh=True)) == []
    finally:
        board.close()
    listed = livemig.list_migrations(settings=zk_settings)
    assert [(m.status, "client socket is closed" in m.error_reason) for m in listed] == [("failed", True)]


def test_zookeeper_unreachable_at_submit_changes_nothing(cloud):
    env = dict(os.environ, PYTHONPATH=ROOT, LIVEMIG_DATA_DIR=cloud.settings.data_dir,
               LIVEMIG_ZOOKEEPER_HOSTS="127.0.0.1:1", LIVEMIG_ZOOKEEPER_SESSION_TIMEOUT="2")
    env.pop("LIVEMIG_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "livemig.cli", "migrate", "--live", "a", "vm1", "b"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 6
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ZooKeeper" in lines[0] and "unreachable" in lines[0]
    with database_for(cloud.settings.database_url).session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Migration)) == 0
    assert cloud.running_on() == ["a"] and cloud.instance().state == "running"


def test_sigterm_hands_the_job_over_after_the_current_step(tmp_path, zk_settings, conductors):
    cloud = FakeCloud.build(tmp_path, zk_settings, migration_seconds=3.0)
    first = conductors.start("first")
    view = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=zk_settings)
    wait_running(zk_settings, view.id)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0  # a clean stop
    first_id = f"{os.uname().nodename}:{first.pid}"
    steps_by_first = [e.name for e in step_events(zk_settings, view.id, "SUCCESS") if e.controller == first_id]
    # It finished the step it was in, and no further one.
    assert steps_by_first[-1] == "migrate-domain"
    assert livemig.show_migration(view.id, settings=zk_settings).status != "completed"
    conductors.start("second")
    (done,) = wait_finished(zk_settings, [view.id], timeout=60)
    assert done.status == "completed"
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1
    assert [e.name for e in step_events(zk_settings, view.id, "SUCCESS")] == EXPECTED_STEPS


def test_conductor_once_runs_one_job_and_exits(tmp_path, zk_settings, conductors):
    cloud = FakeCloud.build(tmp_path, zk_settings)
    cloud.driver.create_domain(cloud.uri("c"), "vm2")
    livemig.sync_hosts(CTX, "c", settings=zk_settings)
    first = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=zk_settings)
    second = livemig.migrate(CTX, "vm2", "c", "b", wait=False, settings=zk_settings)
    proc = subprocess.run([sys.executable, "-m", "livemig.cli", "conductor", "--once", "--name", "once"],
                          cwd=ROOT, env=conductors.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "claimed livemig-migration-" in proc.stderr and "finished livemig-migration-" in proc.stderr
    statuses = sorted(livemig.show_migration(i, settings=zk_settings).status for i in (first.id, second.id))
    assert statuses == ["completed", "queued"]


def migrate_domain_span(settings, migration_id):
    events = step_events(settings, migration_id)
    return (next(e.at for e in events if e.name == "migrate-domain" and e.state == "RUNNING"),
            next(e.at for e in events if e.name == "migrate-domain" and e.state == "SUCCESS"))


@pytest.mark.parametrize("max_migrations,overlap", [(None, True), (1, False)], ids=["default", "one-at-a-time"])
def test_one_conductor_runs_migrations_of_disjoint_hosts_at_once(tmp_path, zk_settings, conductors,
                                                                 max_migrations, overlap):
    # Each hypervisor migration takes 1.5 s: run one after the other they cannot overlap.
    cloud = FakeCloud.build(tmp_path, zk_settings, hosts=("a", "b", "c", "d"), migration_seconds=1.5)
    cloud.driver.create_domain(cloud.uri("c"), "vm2")
    livemig.sync_hosts(CTX, "c", settings=zk_settings)
    first = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=zk_settings)
    second = livemig.migrate(CTX, "vm2", "c", "d", wait=False, settings=zk_settings)
    env = {"LIVEMIG_CONDUCTOR_MAX_MIGRATIONS": str(max_migrations)} if max_migrations else {}
    conductors.start("solo", env=env)
    views = wait_finished(zk_settings, [first.id, second.id], timeout=60)
    assert [v.status for v in views] == ["completed", "completed"]
    (s1, e1), (s2, e2) = (migrate_domain_span(zk_settings, v.id) for v in views)
    assert (s1 < e2 and s2 < e1) is overlap, ((s1, e1), (s2, e2))
    assert cloud.running_on(cloud.instance().uuid) == ["b"]
    with database_for(zk_settings.database_url).session() as s:
        claimed_by = {e.controller for e in s.scalars(sa.select(Event).where(
            Event.kind == "step", Event.migration_id.in_([first.id, second.id])))}
    assert len(claimed_by) == 1  # one conductor process ran both


def test_board_offers_jobs_whose_hosts_are_free_first(zk_settings):
    """A job sharing a host with a claimed job (or with one offered before it)
    comes after those that share none, so that a conductor's slots run
    migrations rather than wait in reserve-hosts; none is left out, and a
    consumed job is forgotten. Closing a board that started its own client
    ends that ZooKeeper session."""
    from livemig.jobs import open_board

    board = open_board(services_for(zk_settings))
    try:
        def post(name, hosts):
            return board.post(name, details={"migration_id": 0, "hosts": hosts})

        def offered():
            return [job.name for job in board.iterjobs(only_unclaimed=True)]

        running = post("running", ["a", "b"])
        post("shares-b", ["b", "c"])
        post("free", ["d", "e"])
        post("shares-d-with-free", ["d", "f"])
        post("no-hosts", [])
        board.claim(running, "someone")
        deadline = time.monotonic() + 10
        while offered() != ["free", "no-hosts", "shares-b", "shares-d-with-free"]:
            assert time.monotonic() < deadline, f"the board never saw the claim: {offered()}"
            time.sleep(0.05)
        # Every job is still listed, the claimed one last.
        assert [job.name for job in board.iterjobs()][-1] == "running"
        board.consume(running, "someone")
        deadline = time.monotonic() + 10
        while offered()[:1] != ["shares-b"]:
            assert time.monotonic() < deadline, "the board never saw the job consumed"
            time.sleep(0.05)
        assert offered() == ["shares-b", "free", "no-hosts", "shares-d-with-free"]
        assert board.job_count == 4
    finally:
        board.close()
    assert not board.client.connected  # the ZooKeeper session it started ended with it


def test_close_ends_the_posting_session_and_the_next_post_opens_another(tmp_path, zk_settings, conductors):
    from kazoo.protocol.states import KazooState

    cloud = FakeCloud.build(tmp_path, zk_settings)
    first = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=zk_settings)
    services = services_for(zk_settings)
    client = services.jobboard.client
    assert client.connected
    livemig.close()
    assert not client.connected and client.state == KazooState.LOST
    assert services_for(zk_settings) is not services
    # Nothing posted was lost by closing, and the next post opens a new session.
    conductors.start("worker")
    assert [v.status for v in wait_finished(zk_settings, [first.id])] == ["completed"]
    back = livemig.migrate(CTX, "vm1", "b", "a", wait=False, settings=zk_settings)
    assert services_for(zk_settings).jobboard.client.connected
    assert [v.status for v in wait_finished(zk_settings, [back.id])] == ["completed"]
    assert cloud.running_on() == ["a"]
    livemig.close()
