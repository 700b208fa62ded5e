"""The scheduler's snapshot and a retried migration on PostgreSQL (the
attempts are a JSON column written under the claim's fence, the snapshot
is grouped queries)."""
from __future__ import annotations

import uuid

import pytest

import livemig
from livemig.errors import MigrationFailed
from tests.fakecloud import FakeCloud

CTX = livemig.admin_context("tests")

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_settings(settings, postgres_url):
    from tests.servers import new_postgres_database

    return settings.replace(database_url=new_postgres_database(postgres_url, f"t_{uuid.uuid4().hex[:12]}"))


def test_a_retried_migration_on_postgresql(tmp_path, pg_settings):
    cloud = FakeCloud.build(tmp_path, pg_settings, hosts=("a", "b", "c", "d"))
    cloud.driver.create_domain(cloud.uri("d"), "big", memory_mb=16384)
    livemig.sync_hosts(CTX, settings=pg_settings)
    assert livemig.choose_destination("vm1", settings=pg_settings).ranked == ("b", "c", "d")
    cloud.driver.inject_fault(cloud.uri("b"), "network_present", "error", "no bridge on b")
    view = livemig.migrate(CTX, "vm1", settings=pg_settings)
    assert (view.dest_host, [(a["host"], a["outcome"]) for a in view.attempts]) == (
        "c", [("b", "failed"), ("c", "completed")])
    assert cloud.running_on() == ["c"] and cloud.reservations() == []
    # Back to a named host, then every host failing.
    for host in ("a", "b", "d"):
        cloud.driver.inject_fault(cloud.uri(host), "network_present", "error", f"no bridge on {host}")
    with pytest.raises(MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", settings=pg_settings)
    failed = livemig.show_migration(info.value.migration_id, settings=pg_settings)
    assert [a["host"] for a in failed.attempts] == ["a", "b", "d"]
    assert all(f"no bridge on {h}" in failed.error_reason for h in "abd")
    assert cloud.running_on() == ["c"] and cloud.instance().host == "c"
