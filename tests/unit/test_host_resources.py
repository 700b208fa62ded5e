"""Issue 13 item 7: cleanup removes from a host only what livemig itself
defined there (a HostResource record), never what was there before, and
never while another unfinished migration of that host may need it."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

import livemig
from livemig.drivers.base import DiskInfo, InterfaceInfo
from livemig.persistence.database import database_for
from livemig.persistence.models import HostResource
from tests.fakecloud import FILTER_XML

CTX = livemig.admin_context("tests")


def owned(cloud) -> set[tuple[str, str, str]]:
    with database_for(cloud.settings.database_url).session() as s:
        return {(r.host, r.kind, r.name) for r in s.scalars(sa.select(HostResource))}


def test_objects_on_the_source_before_livemig_stay_after_the_vm_leaves(cloud):
    # The fake cloud's host a had filter sg-web and secret vol-1 before livemig ran.
    livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert cloud.running_on() == ["b"]
    assert cloud.host_record("a")["filters"]["sg-web"] == FILTER_XML
    assert cloud.host_record("a")["secrets"]["vol-1"]["value"] == "s3cret"
    # What livemig defined on b is recorded as its own; nothing on a is.
    assert owned(cloud) == {("b", "filter", "sg-web"), ("b", "secret", "vol-1")}


def test_objects_livemig_created_are_removed_when_the_last_user_leaves(cloud):
    livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    livemig.migrate(CTX, "vm1", "b", "c", settings=cloud.settings)
    assert cloud.running_on() == ["c"]
    assert cloud.host_record("b")["filters"] == {} and cloud.host_record("b")["secrets"] == {}
    assert owned(cloud) == {("c", "filter", "sg-web"), ("c", "secret", "vol-1")}
    # Back to a, which had them before livemig: c's are removed, a's stay.
    livemig.migrate(CTX, "vm1", "c", "a", settings=cloud.settings)
    assert cloud.host_record("c")["filters"] == {} and cloud.host_record("c")["secrets"] == {}
    assert "sg-web" in cloud.host_record("a")["filters"] and "vol-1" in cloud.host_record("a")["secrets"]
    assert owned(cloud) == set()


def test_object_another_unfinished_migration_of_the_host_needs_stays(cloud):
    livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    # vm2 on c uses the same filter and secret; its migration to b is
    # recorded (queued), so its setup may find b's objects and rely on them.
    cloud.driver.update_host(cloud.uri("c"), filters={"sg-web": FILTER_XML},
                             secrets={"vol-1": {"type": "iscsi", "value": "s3cret"}})
    cloud.driver.create_domain(
        cloud.uri("c"), "vm2", interfaces=[InterfaceInfo(mac="52:54:00:aa:00:02", bridge="br-guests",
                                                         filter="sg-web")],
        disks=[DiskInfo(target="vdb", kind="network", source="iscsi://127.0.0.1:3260/iqn.lab:vol/1",
                        protocol="iscsi", hosts=[["127.0.0.1", 3260]], secret_usage="vol-1", secret_type="iscsi")])
    livemig.sync_hosts(CTX, settings=cloud.settings)
    queued = livemig.create_migration(CTX, "vm2", "c", "b", settings=cloud.settings)
    view = livemig.migrate(CTX, "vm1", "b", "a", settings=cloud.settings)
    assert cloud.running_on() == ["a"]
    # No domain on b uses them now, but migration `queued` may: they stay, still livemig's.
    assert "sg-web" in cloud.host_record("b")["filters"] and "vol-1" in cloud.host_record("b")["secrets"]
    assert {("b", "filter", "sg-web"), ("b", "secret", "vol-1")} <= owned(cloud)
    events = livemig.show_migration(view.id, settings=cloud.settings).events
    assert any(f"kept filter sg-web on b: migration {queued.id}" in e.message for e in events)


def test_revert_of_a_setup_forgets_what_it_removed(cloud):
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "error", "destination refused")
    with pytest.raises(livemig.MigrationFailed):
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert cloud.running_on() == ["a"]
    assert cloud.host_record("b")["filters"] == {} and cloud.host_record("b")["secrets"] == {}
    # Removed by the revert: no longer livemig's (a filter someone defines there later is theirs).
    assert owned(cloud) == set()


def test_revert_keeps_what_it_created_when_another_unfinished_migration_needs_it(cloud):
    # vm2 on c, using the same filter and secret, is queued to move to b.
    cloud.driver.update_host(cloud.uri("c"), filters={"sg-web": FILTER_XML},
                             secrets={"vol-1": {"type": "iscsi", "value": "s3cret"}})
    cloud.driver.create_domain(
        cloud.uri("c"), "vm2", interfaces=[InterfaceInfo(mac="52:54:00:aa:00:02", bridge="br-guests",
                                                         filter="sg-web")],
        disks=[DiskInfo(target="vdb", kind="network", source="iscsi://127.0.0.1:3260/iqn.lab:vol/1",
                        protocol="iscsi", hosts=[["127.0.0.1", 3260]], secret_usage="vol-1", secret_type="iscsi")])
    livemig.sync_hosts(CTX, settings=cloud.settings)
    queued = livemig.create_migration(CTX, "vm2", "c", "b", settings=cloud.settings)
    # vm1's migration to b defines them on b, then fails.
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "error", "destination refused")
    with pytest.raises(livemig.MigrationFailed):
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert cloud.running_on() == ["a"]
    # The revert kept them for migration `queued`, and they stay livemig's to remove later.
    assert "sg-web" in cloud.host_record("b")["filters"] and "vol-1" in cloud.host_record("b")["secrets"]
    assert owned(cloud) == {("b", "filter", "sg-web"), ("b", "secret", "vol-1")}
    failed = cloud.last_migration()
    notes = [e.message for e in livemig.show_migration(failed.id, settings=cloud.settings).events]
    assert any(f"kept it: migration {queued.id} (c -> b)" in n for n in notes), notes
