"""Item 9 of issue 13: a migration's logbook (and so its job) carries only the
migration's identity and its own options; whoever runs the flow uses its own
settings."""
from __future__ import annotations

import contextlib

import pytest
import sqlalchemy as sa
from taskflow import engines

import livemig
from livemig.policies import MigrationPolicyOptions
from livemig import services as services_module
from livemig.persistence.database import database_for
from livemig.services import building_flows_with, configure, services_for
from tests.unit.test_flow_contract import _atoms

CTX = livemig.admin_context("tests")


@pytest.fixture
def process_settings():
    """Restores the process's configured settings after the test."""
    saved = dict(services_module._configured)
    yield
    services_module._configured.clear()
    services_module._configured.update(saved)


def flow_detail(settings, migration_id):
    from livemig.persistence.models import Migration

    services = services_for(settings)
    with database_for(settings.database_url).reading() as s:
        m = s.get(Migration, migration_id)
        book_id, flow_id = m.logbook_id, m.flow_id
    with contextlib.closing(services.db.taskflow_backend().get_connection()) as conn:
        return conn.get_logbook(book_id).find(flow_id)

# What a migration records beside the options chosen: every other option's
# default (those left to the runner's settings are left out).
DEFAULT_OPTIONS = {name: value for name, value in MigrationPolicyOptions().to_dict().items() if value is not None}


def test_the_logbook_holds_the_identity_and_options_not_the_settings(cloud):
    settings = cloud.settings.replace(unrecoverable_policy="mark-error", admin_group="ops-c1-marker")
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=settings, queue_timeout_s=7,
                                    options={"max_downtime_ms": 42})
    detail = flow_detail(settings, view.id)
    assert detail.meta["factory"]["args"] == [{**DEFAULT_OPTIONS, "max_downtime_ms": 42, "queue_timeout_s": 7.0}]
    assert set(detail.meta["store"]) == {"migration_id", "instance_uuid", "source_host", "dest_host"}
    assert cloud.migration(view.id).options == {**DEFAULT_OPTIONS, "max_downtime_ms": 42, "queue_timeout_s": 7.0}
    # Nothing of the poster's settings in any of TaskFlow's rows.
    with database_for(settings.database_url).engine.connect() as conn:
        text = " ".join(repr(tuple(row)) for table in ("logbooks", "flowdetails", "atomdetails")
                        for row in conn.execute(sa.text(f"SELECT * FROM {table}")))
    for value in (settings.data_dir, settings.database_url, "ops-c1-marker", "mark-error"):
        assert value not in text


def test_a_rebuilt_flow_runs_with_the_builders_settings_and_the_migrations_options(cloud, process_settings):
    poster = cloud.settings.replace(unrecoverable_policy="mark-error", bandwidth_mib_s=5)
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=poster, options={"max_downtime_ms": 42})
    detail = flow_detail(poster, view.id)
    # A conductor: its own settings (same database, its own policies), set when it starts.
    conductor = cloud.settings.replace(unrecoverable_policy="terminate", bandwidth_mib_s=0, max_downtime_ms=900)
    configure(conductor)
    flow = engines.flow_from_detail(detail)
    seen = {(t.services.settings.unrecoverable_policy, t.services.settings.bandwidth_mib_s,
             t.services.settings.max_downtime_ms) for t in _atoms(flow)}
    assert seen == {("terminate", 0, 42)}
    assert {t.services.db for t in _atoms(flow)} == {services_for(conductor).db}
    # A caller building the engine itself (runner.load_engine: an in-process run) says whose.
    with building_flows_with(services_for(poster)):
        flow = engines.flow_from_detail(detail)
    assert {(t.services.settings.unrecoverable_policy, t.services.settings.bandwidth_mib_s) for t in _atoms(flow)} == \
        {("mark-error", 5)}


def test_a_migration_with_options_runs_and_records_them(cloud):
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings,
                           options={"max_downtime_ms": 120, "bandwidth_mib_s": 50})
    assert view.status == "completed"
    assert cloud.running_on() == ["b"]
    assert cloud.migration(view.id).options == {**DEFAULT_OPTIONS, "max_downtime_ms": 120, "bandwidth_mib_s": 50}


def test_a_logbook_saved_with_the_whole_settings_keeps_only_the_options(cloud):
    """Flows recorded before this change still resume, with the runner's settings."""
    from livemig.flows.live_migration import get_live_migration_flow

    legacy = cloud.settings.replace(database_url="postgresql://someone:pw@elsewhere/db", max_downtime_ms=50,
                                    unrecoverable_policy="mark-error").to_dict()
    with building_flows_with(services_for(cloud.settings)):
        flow = get_live_migration_flow(legacy)
    assert {(t.services.settings.database_url, t.services.settings.unrecoverable_policy,
             t.services.settings.max_downtime_ms) for t in _atoms(flow)} == \
        {(cloud.settings.database_url, "terminate", 50)}
