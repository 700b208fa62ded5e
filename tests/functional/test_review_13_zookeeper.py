"""Helper V's adversarial review of issue 13 with a real ZooKeeper: what a
stale controller could still change outside the database."""
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


def test_a_stale_controller_reserves_no_host_after_another_claimed_the_migration(tmp_path, settings, zookeeper):
    """A controller frozen in reserve-hosts (waiting in the queue) while
    another took the migration over and moved it to another destination
    created, when it woke, a reservation znode on the old destination: no
    database write fences a znode, and the new owner releases only its own
    attempt's hosts, so the old destination stayed blocked by a phantom."""
    zk_settings = settings.replace(zookeeper_hosts=zookeeper.hosts, zookeeper_session_timeout=2.0,
                                   zookeeper_root=f"/review13-{uuid.uuid4().hex[:8]}")
    cloud = FakeCloud.build(tmp_path, zk_settings)
    mid = livemig.create_migration(CTX, "vm1", "a", "b", settings=zk_settings).id
    to_b = {"migration_id": mid, "instance_uuid": cloud.vm, "source_host": "a", "dest_host": "b"}
    to_c = dict(to_b, dest_host="c")
    services = services_for(zk_settings)
    try:
        stale = claim_migration(services, mid)
        current = claim_migration(services, mid)  # another controller took it over...
        with fencing.claimed(mid, current):
            ReserveHosts(services, name="reserve-hosts").execute(**to_c)  # ...and holds a and c for it
        with fencing.claimed(mid, stale), pytest.raises(fencing.Fenced):
            ReserveHosts(services, name="reserve-hosts").execute(**to_b)
        assert services.reservations.holders("b") == [], "a stale controller reserved b"
        assert services.reservations.holders("a") == [mid] and services.reservations.holders("c") == [mid]
    finally:
        services.reservations.release(mid, ["a", "b", "c"])
