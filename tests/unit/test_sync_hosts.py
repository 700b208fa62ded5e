"""`sync_hosts` with one domain on two hosts: a conflict kept for reconcile,
never settled by the order the hosts are listed in."""
from __future__ import annotations

import sqlalchemy as sa

import livemig
from livemig.persistence.database import database_for
from livemig.persistence.models import Leftover

CTX = livemig.admin_context("tests")


def leftovers(cloud):
    with database_for(cloud.settings.database_url).session() as s:
        return [(l.kind, l.host, l.name) for l in s.scalars(sa.select(Leftover).order_by(Leftover.id))]


def test_a_copy_on_a_later_listed_host_does_not_move_the_instance(cloud):
    # A stale copy of vm1 on c (listed after a): the inventory keeps a.
    cloud.driver.create_domain(cloud.uri("c"), "vm1", uuid=cloud.vm, memory_mb=256)
    livemig.sync_hosts(CTX, settings=cloud.settings)
    assert cloud.instance().host == "a" and cloud.instance().state == "running"
    assert leftovers(cloud) == [("duplicate-domain", "c", cloud.vm)]
    # Syncing c alone asks a too, and still keeps a.
    livemig.sync_hosts(CTX, "c", settings=cloud.settings)
    assert cloud.instance().host == "a" and leftovers(cloud) == [("duplicate-domain", "c", cloud.vm)]


def test_two_copies_away_from_the_recorded_host_mark_the_instance(cloud):
    cloud.driver.create_domain(cloud.uri("b"), "vm1", uuid=cloud.vm, memory_mb=256)
    cloud.driver.create_domain(cloud.uri("c"), "vm1", uuid=cloud.vm, memory_mb=256)
    cloud.driver.destroy_domain(cloud.uri("a"), cloud.vm)
    livemig.sync_hosts(CTX, settings=cloud.settings)
    # Neither copy is chosen; the instance is marked and both are recorded.
    assert (cloud.instance().host, cloud.instance().state) == ("a", "error")
    assert sorted(leftovers(cloud)) == [("duplicate-domain", "b", cloud.vm), ("duplicate-domain", "c", cloud.vm)]


def test_the_running_copy_wins_over_a_shut_off_duplicate(cloud):
    # vm1 was started again on c from a copy of its definition; the old one
    # on a (its recorded host) is shut off.
    dom = cloud.domains_on("a")[cloud.vm]
    cloud.driver.update_host(cloud.uri("a"), domains={cloud.vm: {**dom, "state": "shutoff"}})
    cloud.driver.update_host(cloud.uri("c"), domains={cloud.vm: dict(dom)})
    livemig.sync_hosts(CTX, settings=cloud.settings)
    assert (cloud.instance().host, cloud.instance().state) == ("c", "running")
    assert leftovers(cloud) == [("duplicate-domain", "a", cloud.vm)]  # the duplicate is reported
    with database_for(cloud.settings.database_url).session() as s:
        reason = s.scalars(sa.select(Leftover)).one().reason
    assert "shutoff here and also on c (running)" in reason and "keeps it on c" in reason
    # Syncing a alone asks c too, and the running copy still wins.
    livemig.sync_hosts(CTX, "a", settings=cloud.settings)
    assert cloud.instance().host == "c"


def test_a_running_copy_does_not_win_over_a_paused_one(cloud):
    # A paused copy may be the VM itself (suspended, or mid-migration): the
    # rule is for shut-off duplicates only.
    dom = cloud.domains_on("a")[cloud.vm]
    cloud.driver.update_host(cloud.uri("a"), domains={cloud.vm: {**dom, "state": "paused"}})
    cloud.driver.update_host(cloud.uri("c"), domains={cloud.vm: dict(dom)})
    livemig.sync_hosts(CTX, settings=cloud.settings)
    assert (cloud.instance().host, cloud.instance().state) == ("a", "paused")
    assert leftovers(cloud) == [("duplicate-domain", "c", cloud.vm)]


def test_a_guest_suspended_vm_is_pmsuspended_not_paused(cloud):
    from livemig.errors import PrecheckFailed

    dom = cloud.domains_on("a")[cloud.vm]
    cloud.driver.update_host(cloud.uri("a"), domains={cloud.vm: {**dom, "state": "pmsuspended"}})
    livemig.sync_hosts(CTX, settings=cloud.settings)
    assert (cloud.instance().host, cloud.instance().state) == ("a", "pmsuspended")
    view = {i.uuid: i for i in livemig.list_instances(settings=cloud.settings)}[cloud.vm]
    assert view.state == "pmsuspended"
    try:
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    except PrecheckFailed as exc:
        assert "is pmsuspended, not running" in str(exc)
    else:
        raise AssertionError("a pmsuspended VM was migrated")
