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
