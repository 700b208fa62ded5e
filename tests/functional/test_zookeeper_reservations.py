"""Host reservations in a real ZooKeeper, raced by many controllers at once."""
from __future__ import annotations

import threading
import uuid

import pytest

from livemig.config import Settings
from livemig.coordination.base import HostLimit
from livemig.coordination.zookeeper import ZookeeperReservations


@pytest.fixture
def zk_root_settings(zookeeper, tmp_path):
    return Settings(data_dir=str(tmp_path), zookeeper_hosts=zookeeper.hosts,
                    zookeeper_root=f"/res-{uuid.uuid4().hex[:8]}")


def _race(settings, claims: list[tuple[int, str, list[HostLimit]]]) -> dict[int, str | None]:
    """Each claim from its own controller (own ZooKeeper session), all released at once."""
    services = [ZookeeperReservations(settings) for _ in claims]
    for s in services:
        s.client  # connect before the race starts  # noqa: B018
    start, outcomes = threading.Barrier(len(claims)), {}

    def run(service, migration_id, instance, hosts):
        start.wait()
        outcomes[migration_id] = service.try_reserve(migration_id, instance, hosts)

    threads = [threading.Thread(target=run, args=(svc, *claim)) for svc, claim in zip(services, claims)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in services:
        s.close()
    return outcomes


@pytest.mark.parametrize("limit", [1, 2])
def test_concurrent_controllers_never_overbook_a_host(zk_root_settings, limit):
    # Eight migrations from different sources into one destination, all at once.
    claims = [(100 + i, f"vm-{i}", [HostLimit(f"src{i}", 1), HostLimit("dst", limit)]) for i in range(8)]
    outcomes = _race(zk_root_settings, claims)
    winners = sorted(m for m, reason in outcomes.items() if reason is None)
    assert len(outcomes) == 8 and len(winners) == limit
    assert all("host dst is in" in reason for m, reason in outcomes.items() if reason is not None)
    checker = ZookeeperReservations(zk_root_settings)
    try:
        assert checker.holders("dst") == winners
        # A loser left nothing behind on its own source either.
        assert [checker.holders(f"src{m - 100}") for m in range(100, 108)] == \
            [[m] if m in winners else [] for m in range(100, 108)]
    finally:
        checker.close()


def test_one_instance_is_reserved_by_one_migration(zk_root_settings):
    claims = [(200 + i, "the-vm", [HostLimit(f"a{i}", 1), HostLimit(f"b{i}", 1)]) for i in range(6)]
    outcomes = _race(zk_root_settings, claims)
    winners = [m for m, reason in outcomes.items() if reason is None]
    assert len(winners) == 1
    assert all(f"is in migration {winners[0]}" in reason for reason in outcomes.values() if reason is not None)


def test_reserve_is_idempotent_and_release_frees_the_host(zk_root_settings):
    svc = ZookeeperReservations(zk_root_settings)
    try:
        hosts = [HostLimit("a", 1), HostLimit("b", 1)]
        assert svc.try_reserve(1, "vm", hosts) is None
        assert svc.try_reserve(1, "vm", hosts) is None  # a resumed flow reserves again
        assert svc.holders("a") == [1] and svc.holders("b") == [1]
        assert "host a is in 1 migration(s)" in svc.try_reserve(2, "other", [HostLimit("a", 1), HostLimit("c", 1)])
        svc.release(1, ["a", "b"])
        assert svc.holders("a") == [] and svc.holders("b") == []
        assert svc.try_reserve(2, "other", [HostLimit("a", 1), HostLimit("c", 1)]) is None
    finally:
        svc.close()


def test_release_leaves_nothing_even_after_a_release_interrupted_half_way(zk_root_settings):
    svc = ZookeeperReservations(zk_root_settings)
    root = zk_root_settings.zookeeper_root
    try:
        hosts = [HostLimit("a", 1), HostLimit("b", 1)]
        assert svc.try_reserve(1, "vm", hosts) is None
        svc.release(1, ["a", "b"])  # in one transaction
        assert svc.holders("a") == [] and svc.holders("b") == []
        assert svc.client.exists(f"{root}/reservations/instances/vm") is None
        # A controller that died after deleting one reservation: the next
        # release (its resume) removes the rest, one by one.
        assert svc.try_reserve(2, "vm", hosts) is None
        svc.client.delete(f"{root}/reservations/hosts/a/2")
        svc.release(2, ["a", "b"])
        assert svc.holders("a") == [] and svc.holders("b") == []
        assert svc.client.exists(f"{root}/reservations/instances/vm") is None
        # Another migration's hold on the instance is not this one's to release.
        assert svc.try_reserve(3, "vm", hosts) is None
        svc.release(4, ["a", "b"])
        assert svc.holders("a") == [3] and svc.client.exists(f"{root}/reservations/instances/vm") is not None
    finally:
        svc.close()
