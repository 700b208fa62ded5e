"""A stale controller's reverts change nothing kept outside the database:
with ZooKeeper reservations no database write fences the release, so the
revert itself checks its claim first."""
from __future__ import annotations

import uuid

import pytest

import livemig
from livemig import fencing
from livemig.runner import claim_migration
from livemig.services import services_for
from livemig.tasks.reservation import ReserveHosts
from tests.fakecloud import FakeCloud

CTX = livemig.admin_context("tests")


def test_a_stale_controllers_reserve_revert_keeps_the_new_owners_znodes(tmp_path, settings, zookeeper):
    zk_settings = settings.replace(zookeeper_hosts=zookeeper.hosts, zookeeper_session_timeout=2.0,
                                   zookeeper_root=f"/fenced-{uuid.uuid4().hex[:8]}")
    cloud = FakeCloud.build(tmp_path, zk_settings)
    mid = livemig.create_migration(CTX, "vm1", "a", "b", settings=zk_settings).id
    mig = {"migration_id": mid, "instance_uuid": cloud.vm, "source_host": "a", "dest_host": "b"}
    services = services_for(zk_settings)
    try:
        stale = claim_migration(services, mid)
        with fencing.claimed(mid, stale):
            ReserveHosts(services, name="reserve-hosts").execute(**mig)
        claim_migration(services, mid)  # another controller took the migration over (and holds its hosts)
        with fencing.claimed(mid, stale), pytest.raises(fencing.Fenced):
            ReserveHosts(services, name="reserve-hosts").revert(**mig)
        assert sorted(services.reservations.holders("a") + services.reservations.holders("b")) == [mid, mid]
    finally:
        services.reservations.release(mid, ["a", "b"])
