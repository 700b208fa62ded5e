"""The inventory schema and TaskFlow's logbooks in one database, on SQLite and
on a real PostgreSQL server, and a whole migration flow persisted in each."""
from __future__ import annotations

import contextlib
import uuid

import pytest
import sqlalchemy as sa
from taskflow.persistence import models as tf_models

import livemig
from livemig.errors import MigrationFailed
from livemig.persistence.database import SCHEMA_HEAD, Database
from tests.fakecloud import FakeCloud

CTX = livemig.admin_context("tests")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request, tmp_path, settings):
    if request.param == "sqlite":
        return settings
    from tests.servers import new_postgres_database

    url = new_postgres_database(request.getfixturevalue("postgres_url"), f"t_{uuid.uuid4().hex[:12]}")
    return settings.replace(database_url=url)


def test_schema_upgrade_is_idempotent_and_keeps_its_own_version_table(db_settings):
    db = Database(db_settings.database_url)
    db.upgrade()
    db.upgrade()
    tables = set(sa.inspect(db.engine).get_table_names())
    assert {"livemig_hosts", "livemig_instances", "livemig_migrations", "livemig_events",
            "livemig_reservations", "livemig_leftovers", "livemig_host_resources",
            "livemig_credentials", "logbooks", "flowdetails", "atomdetails"} <= tables
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("select version_num from livemig_alembic_version")).scalar() == SCHEMA_HEAD
    db.dispose()


def test_taskflow_logbook_round_trips(db_settings):
    db = Database(db_settings.database_url)
    db.upgrade()
    backend = db.taskflow_backend()
    book = tf_models.LogBook("probe")
    book.add(tf_models.FlowDetail("f", uuid=str(uuid.uuid4())))
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
        again = conn.get_logbook(book.uuid)
    assert again.name == "probe" and len(again) == 1
    db.dispose()


def test_migration_completes_and_fails_cleanly_on_each_database(tmp_path, db_settings):
    cloud = FakeCloud.build(tmp_path, db_settings)
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=db_settings)
    assert view.status == "completed" and cloud.running_on() == ["b"]
    # The audit trail (written with each state, in one statement on PostgreSQL).
    trail = [(e.kind, e.name, e.state) for e in livemig.show_migration(view.id, settings=db_settings).events
             if e.kind in ("step", "flow")]
    from tests.unit.test_flow_contract import EXPECTED_STEPS
    assert trail == ([("flow", "livemig-live-migration-flow", "RUNNING")]
                     + [("step", n, s) for n in EXPECTED_STEPS for s in ("RUNNING", "SUCCESS")]
                     + [("flow", "livemig-live-migration-flow", "SUCCESS")])
    assert all(e.at is not None and e.controller for e in livemig.show_migration(view.id, settings=db_settings).events)
    cloud.driver.inject_fault(cloud.uri("b"), "migrate", "dest-died")
    with pytest.raises(MigrationFailed):
        livemig.migrate(CTX, "vm1", "b", "c", settings=db_settings)
    assert cloud.running_on() == ["b"] and cloud.domains_on("c") == {}
    statuses = [m.status for m in livemig.list_migrations(settings=db_settings)]
    assert statuses == ["failed", "completed"]
    # The persisted flow of the failed one is REVERTED in TaskFlow's tables.
    from livemig.services import services_for
    failed = livemig.list_migrations(settings=db_settings)[0]
    with services_for(db_settings).db.reading() as session:
        from livemig.persistence.models import Migration
        row = session.get(Migration, failed.id)
    book = services_for(db_settings).db.taskflow_backend().get_connection().get_logbook(row.logbook_id)
    assert book.find(row.flow_id).state == "REVERTED"


def test_a_migration_is_recorded_with_its_flow_or_not_at_all(tmp_path, db_settings, monkeypatch):
    """The migration row, its "queued" event and its logbook are one
    transaction: a logbook that cannot be saved leaves no migration behind."""
    from taskflow import exceptions as tf_exc

    from livemig.persistence.models import Event, Migration
    from livemig.persistence.taskflow_backend import LivemigConnection
    from livemig.services import services_for

    cloud = FakeCloud.build(tmp_path, db_settings)

    def broken(self, conn, flow_detail, parent_uuid):
        conn.execute(sa.text("SELECT no_such_column FROM flowdetails"))

    with monkeypatch.context() as patch:
        patch.setattr(LivemigConnection, "_insert_flow_details", broken)
        with pytest.raises(tf_exc.StorageFailure):
            livemig.create_migration(CTX, "vm1", "a", "b", settings=db_settings)
    db = services_for(db_settings).db
    with db.reading() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Migration)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(Event)) == 0
        assert session.execute(sa.text("SELECT count(*) FROM logbooks")).scalar() == 0
    # Nothing was left to block the next request for the same instance.
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=db_settings)
    assert view.status == "completed" and cloud.running_on() == ["b"]
    with db.reading() as session:
        assert session.execute(sa.text("SELECT count(*) FROM logbooks")).scalar() == 1


def test_unreachable_database_is_one_clear_error(settings):
    from livemig.errors import DatabaseUnavailable
    bad = settings.replace(database_url="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        livemig.list_hosts(settings=bad)


def test_schema_head_constant_matches_the_migrations():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from livemig.persistence.database import ALEMBIC_DIR, SCHEMA_HEAD
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD


def _book_with_task(db):
    backend = db.taskflow_backend()
    book = tf_models.LogBook("atoms")
    flow = tf_models.FlowDetail("f", uuid=str(uuid.uuid4()))
    book.add(flow)
    task = tf_models.TaskDetail("t", uuid=str(uuid.uuid4()))
    flow.add(task)
    conn = backend.get_connection()
    conn.save_logbook(book)
    return conn, book, task


def _stored(conn, book, task):
    return conn.get_logbook(book.uuid).find(list(book)[0].uuid).find(task.uuid)


def test_atom_writes_persist_state_and_skip_progress_only_changes(db_settings):
    db = Database(db_settings.database_url)
    db.upgrade()
    conn, book, task = _book_with_task(db)
    running = task.copy()
    running.state = "RUNNING"
    conn.update_atom_details(running)
    assert _stored(conn, book, task).state == "RUNNING"
    # TaskFlow's automatic progress write: kept in memory only...
    started = running.copy()
    started.meta = dict(running.meta, progress=0.0)
    conn.update_atom_details(started)
    assert _stored(conn, book, task).meta.get("progress") is None
    # ...and written with the next change of state, with the result.
    done = started.copy()
    done.state, done.results = "SUCCESS", {"downtime_ms": 12}
    conn.update_atom_details(done)
    stored = _stored(conn, book, task)
    assert (stored.state, stored.results, stored.meta.get("progress")) == ("SUCCESS", {"downtime_ms": 12}, 0.0)
    db.dispose()


def test_atom_write_of_an_unknown_atom_is_not_found(db_settings):
    from taskflow import exceptions as tf_exc

    db = Database(db_settings.database_url)
    db.upgrade()
    conn, _book, _task = _book_with_task(db)
    stray = tf_models.TaskDetail("stray", uuid=str(uuid.uuid4()))
    with pytest.raises(tf_exc.NotFound):
        conn.update_atom_details(stray)
    db.dispose()


@pytest.mark.parametrize("idle_ping_s,survives", [(0.0, True), (3600.0, False)])
def test_pooled_connection_killed_by_the_server_is_replaced_after_idling(postgres_url, monkeypatch, idle_ping_s,
                                                                          survives):
    """A connection the server dropped (a restart, an idle timeout) is tested
    and replaced at checkout once it has been idle; one used moments ago is
    not tested (which is what the other case shows: its statement fails)."""
    from tests.servers import new_postgres_database
    import livemig.persistence.database as database

    monkeypatch.setattr(database, "IDLE_PING_S", idle_ping_s)
    url = new_postgres_database(postgres_url, f"t_{uuid.uuid4().hex[:12]}")
    engine = database.make_engine(url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        killer = database.make_engine(url)
        with killer.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        killer.dispose()
        if survives:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() != pid
        else:
            with pytest.raises(sa.exc.OperationalError), engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


def test_reading_session_sees_commits_and_saves_nothing(tmp_path, db_settings):
    from livemig.persistence.models import Host
    from livemig.services import services_for

    FakeCloud.build(tmp_path, db_settings)
    db = services_for(db_settings).db
    with db.reading() as session:
        host = session.get(Host, "a")
        host.zone = "changed-by-a-reader"
        # A query after the change: no flush (and so, on a server, no write).
        assert session.scalar(sa.select(Host.zone).where(Host.name == "a")) == "default"
    with db.session() as session:
        session.get(Host, "a").zone = "committed"
    with db.reading() as session:
        assert session.get(Host, "a").zone == "committed"


def test_server_pool_keeps_a_connection_per_concurrent_migration(postgres_url):
    """Sixteen threads at once (a conductor's default), then all of their
    connections stay open for the next statements instead of being closed."""
    import threading

    from tests.servers import new_postgres_database
    import livemig.persistence.database as database

    engine = database.make_engine(new_postgres_database(postgres_url, f"t_{uuid.uuid4().hex[:12]}"))
    try:
        barrier = threading.Barrier(16)

        def work():
            with engine.connect() as conn:
                barrier.wait(10)  # all sixteen hold a connection at once
                conn.execute(sa.text("SELECT 1"))

        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert engine.pool.checkedin() == 16
    finally:
        engine.dispose()


def test_server_pool_runs_lone_statements_in_autocommit_and_transactions_in_read_committed(postgres_url):
    """One pool for both: a lone statement commits at once, a transaction
    rolls back whole, and neither mode outlives its checkout."""
    from tests.servers import new_postgres_database
    import livemig.persistence.database as database

    engine = database.make_engine(new_postgres_database(postgres_url, f"t_{uuid.uuid4().hex[:12]}"))
    lone = database.without_transaction_blocks(engine)
    try:
        assert lone is not engine and lone.pool is engine.pool
        with lone.connect() as conn:
            conn.execute(sa.text("CREATE TABLE t (x int)"))
        for _ in range(2):
            with pytest.raises(RuntimeError), engine.begin() as conn:
                assert not conn.connection.driver_connection.autocommit
                assert conn.execute(sa.text("SHOW transaction_isolation")).scalar() == "read committed"
                conn.execute(sa.text("INSERT INTO t VALUES (1)"))
                raise RuntimeError("abandon the transaction")
            with lone.connect() as conn:
                assert conn.connection.driver_connection.autocommit
                conn.execute(sa.text("INSERT INTO t VALUES (2)"))
                conn.rollback()  # nothing to roll back: the insert is already committed
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT array_agg(x) FROM t")).scalar() == [2, 2]
        assert engine.pool.checkedin() == 1  # the same connection served both modes
    finally:
        engine.dispose()


def test_status_changes_record_events_and_an_outcome_is_final(tmp_path, db_settings):
    from livemig.errors import MigrationNotFound
    from livemig.persistence.database import database_for
    from livemig.states import MigrationStatus

    FakeCloud.build(tmp_path, db_settings)
    migration_id = livemig.create_migration(CTX, "vm1", "a", "b", settings=db_settings).id
    db = database_for(db_settings.database_url)
    db.set_migration_status(migration_id, MigrationStatus.RUNNING)
    started = livemig.show_migration(migration_id, settings=db_settings).started_at
    db.set_migration_status(migration_id, MigrationStatus.RUNNING)  # no change: no event, same start
    db.set_migration_status(migration_id, MigrationStatus.POST_MIGRATING, progress=1.0, downtime_ms=17)
    db.set_migration_status(migration_id, MigrationStatus.FAILED, "dest died")
    # A fenced-off controller waking up late cannot reopen the outcome.
    db.set_migration_status(migration_id, MigrationStatus.RUNNING)
    view = livemig.show_migration(migration_id, settings=db_settings)
    assert (view.status, view.error_reason, view.progress, view.downtime_ms) == ("failed", "dest died", 1.0, 17)
    assert view.started_at == started is not None and view.finished_at is not None
    trail = [(e.kind, e.state, e.message) for e in view.events if e.kind in ("status", "note")
             and e.name == "migration"]
    assert trail == [("status", "queued", trail[0][2]), ("status", "running", ""), ("status", "post-migrating", ""),
                     ("status", "failed", "dest died"),
                     ("note", "failed", trail[-1][2])]
    assert trail[-1][2].startswith("ignored a late change to running")
    with pytest.raises(MigrationNotFound):
        db.set_migration_status(migration_id + 1000, MigrationStatus.RUNNING)


def test_a_posted_job_is_named_with_a_note_and_only_for_a_migration_that_exists(tmp_path, db_settings):
    from livemig.errors import MigrationNotFound
    from livemig.persistence.database import database_for
    from livemig.persistence.models import Event, Migration

    FakeCloud.build(tmp_path, db_settings)
    migration_id = livemig.create_migration(CTX, "vm1", "a", "b", settings=db_settings).id
    db = database_for(db_settings.database_url)
    db.set_job(migration_id, "job-1")
    with pytest.raises(MigrationNotFound):
        db.set_job(migration_id + 1000, "job-2")
    with db.reading() as session:
        job_id = session.get(Migration, migration_id).job_id
        notes = [(e.migration_id, e.state, e.message) for e in session.scalars(
            sa.select(Event).where(Event.name == "jobboard"))]
    assert job_id == "job-1"
    assert notes == [(migration_id, "posted", "job job-1")]  # none for the migration that does not exist


def test_a_stale_claim_changes_nothing(tmp_path, db_settings):
    """Every write of a migration's rows and flow state under a claim that a
    newer one superseded raises Fenced and changes nothing."""
    from livemig import fencing
    from livemig.persistence.models import Event, Instance, Migration
    from livemig.runner import claim_migration, load_engine
    from livemig.services import services_for
    from livemig.states import MigrationStatus

    cloud = FakeCloud.build(tmp_path, db_settings)
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=db_settings)
    services = services_for(db_settings)
    db = services.db
    stale_epoch = claim_migration(services, view.id)
    current_epoch = claim_migration(services, view.id)
    assert current_epoch == stale_epoch + 1
    with fencing.claimed(view.id, current_epoch):
        engine = load_engine(services, view.id)
        engine.compile()
        engine.prepare()  # writes the flow's atoms under the current claim

    def world():
        with db.reading() as session:
            migration = session.get(Migration, view.id)
            events = session.scalar(sa.select(sa.func.count()).select_from(Event))
            instance = session.get(Instance, cloud.vm)
            row = (migration.status, migration.progress, events, instance.state)
        conn = db.taskflow_backend().get_connection()
        flow = conn.get_logbook(migration.logbook_id).find(migration.flow_id)
        return row, flow.state, sorted((a.name, a.state) for a in flow)

    before = world()
    instances = Instance.__table__
    with fencing.claimed(view.id, stale_epoch):
        with pytest.raises(fencing.Fenced):
            db.set_migration_status(view.id, MigrationStatus.PREPARING)
        with pytest.raises(fencing.Fenced):
            db.record_event(view.id, "note", "stale", "", "from a stale claim")
        with pytest.raises(fencing.Fenced):
            engine.storage.set_flow_state("SUSPENDED")
        with pytest.raises(fencing.Fenced):
            engine.storage.set_atom_state("reserve-hosts", "RUNNING")
        with pytest.raises(fencing.Fenced):
            with db.session() as session:
                session.get(Migration, view.id).progress = 0.5
        with pytest.raises(fencing.Fenced):
            with db.autocommit() as conn:
                conn.execute(sa.update(instances).where(instances.c.uuid == cloud.vm).values(state="error"))
        with pytest.raises(fencing.Fenced):
            fencing.ensure_current_claim(db, view.id)
    assert world() == before
    with fencing.claimed(view.id, current_epoch):
        fencing.ensure_current_claim(db, view.id)
        db.set_migration_status(view.id, MigrationStatus.PREPARING)
    assert world()[0][0] == "preparing"


def test_a_recorded_outcome_is_never_changed_on_either_database(tmp_path, db_settings):
    from livemig.services import services_for
    from livemig.states import MigrationStatus

    FakeCloud.build(tmp_path, db_settings)
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=db_settings)
    db = services_for(db_settings).db
    db.set_migration_status(view.id, MigrationStatus.COMPLETED)
    db.set_migration_status(view.id, MigrationStatus.FAILED, "late")
    db.set_migration_status(view.id, MigrationStatus.RUNNING)
    shown = livemig.show_migration(view.id, settings=db_settings)
    assert (shown.status, shown.error_reason) == ("completed", None)
    notes = [e.message for e in shown.events if e.kind == "note" and e.name == "migration"]
    assert len(notes) == 2 and all("ignored a late change" in n for n in notes)


def test_the_migrated_schema_matches_the_models(db_settings):
    # A model column or index without its alembic revision (or the reverse)
    # shows here, on each database, before it fails in production.
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from livemig.persistence.models import Base
    db = Database(db_settings.database_url)
    db.upgrade()
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": "livemig_alembic_version"})
        diff = compare_metadata(context, Base.metadata)
    # TaskFlow's tables (logbooks, ...) are not livemig's models: only the
    # differences that name a livemig table count.
    diff = [d for d in diff if "livemig_" in repr(d)]
    assert diff == [], diff
    db.dispose()
