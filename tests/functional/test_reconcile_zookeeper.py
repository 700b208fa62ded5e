"""Reconcile with a real ZooKeeper: reservation znodes listed and released,
and a conductor that starts repairs the safe part (stale znodes, a flow that
nobody runs) before it takes jobs."""
from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

import livemig
from livemig.coordination.base import Holding, HostLimit
from livemig.coordination.zookeeper import ZookeeperReservations
from livemig.persistence.database import database_for
from livemig.persistence.inventory import set_migration_status
from livemig.persistence.models import Event, Migration
from livemig.services import services_for
from livemig.states import MigrationStatus
from tests.fakecloud import FakeCloud

CTX = livemig.admin_context("tests")


@pytest.fixture
def zk_settings(settings, zookeeper):
    return settings.replace(zookeeper_hosts=zookeeper.hosts, zookeeper_session_timeout=2.0,
                            zookeeper_root=f"/reconcile-{uuid.uuid4().hex[:8]}", queue_timeout_s=30.0,
                            poll_interval_s=0.05)


def test_reservation_znodes_are_listed_and_released_by_migration(zk_settings):
    service = ZookeeperReservations(zk_settings)
    try:
        assert service.holdings() == []
        assert service.try_reserve(7, "vm-7", [HostLimit("h1", 1), HostLimit("h2", 1)]) is None
        assert service.try_reserve(8, "vm-8", [HostLimit("h3", 1), HostLimit("h4", 1)]) is None
        # A release cut short after the host nodes: the instance node alone.
        root = zk_settings.zookeeper_root
        service.client.create(f"{root}/reservations/instances/vm-9", b"9")
        assert service.holdings() == [Holding(7, "vm-7", "h1"), Holding(7, "vm-7", "h2"), Holding(8, "vm-8", "h3"),
                                      Holding(8, "vm-8", "h4"), Holding(9, "vm-9", None)]
        service.release_migration(7)
        service.release_migration(9)
        service.release_migration(9)  # twice is fine
        assert service.holdings() == [Holding(8, "vm-8", "h3"), Holding(8, "vm-8", "h4")]
        assert service.client.exists(f"{root}/reservations/instances/vm-7") is None
        assert service.client.exists(f"{root}/reservations/instances/vm-9") is None
        # vm-7's hosts and the instance take a new migration.
        assert service.try_reserve(10, "vm-7", [HostLimit("h1", 1), HostLimit("h2", 1)]) is None
    finally:
        service.close()


def _age(settings, migration_id, seconds):
    with database_for(settings.database_url).session() as s:
        past = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=seconds)
        s.execute(sa.update(Migration).where(Migration.id == migration_id).values(created_at=past))
        s.execute(sa.update(Event).where(Event.migration_id == migration_id).values(at=past))


def test_conductor_at_start_releases_stale_znodes_and_resumes_an_unposted_flow(tmp_path, zk_settings):
    from livemig.jobs import run_conductor

    cloud = FakeCloud.build(tmp_path, zk_settings)
    services = services_for(zk_settings)
    # A finished migration whose reservations a failed revert left behind ...
    done = livemig.create_migration(CTX, "vm1", "a", "c", settings=zk_settings).id
    with database_for(zk_settings.database_url).session() as s:
        set_migration_status(s, done, MigrationStatus.FAILED, "test")
    assert services.reservations.try_reserve(done, cloud.vm, [HostLimit("a", 1), HostLimit("b", 1)]) is None
    # ... and a migration recorded whose job was lost: nobody runs it.
    lost = livemig.create_migration(CTX, "vm1", "a", "b", settings=zk_settings).id
    _age(zk_settings, lost, 120)
    report = livemig.reconcile(CTX, settings=zk_settings)
    assert sorted(f.kind for f in report.findings) == ["reservation-of-finished-migration",
                                                       "unfinished-migration-nobody-runs"]
    assert services.reservations.holders("b") == [done]  # the dry run changed nothing

    stop = threading.Event()
    thread = threading.Thread(target=run_conductor, args=(services,), kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while cloud.migration(lost).status != "completed":
            assert time.monotonic() < deadline, cloud.migration(lost).status
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
    # Its hosts were free for it (the stale reservation was released first).
    assert cloud.running_on() == ["b"] and cloud.instance().host == "b"
    assert services.reservations.holdings() == []
    assert livemig.reconcile(CTX, apply=True, settings=zk_settings).findings == []
