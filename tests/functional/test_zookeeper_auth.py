"""ZooKeeper digest authentication: livemig's znodes belong to its identity,
so a client without the credentials can neither delete a reservation nor post
or remove a job (real ZooKeeper)."""
from __future__ import annotations

import uuid

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from livemig.config import Settings
from livemig.coordination.base import HostLimit
from livemig.coordination.zookeeper import ZookeeperReservations
from livemig.errors import InvalidInput
from livemig.jobs import open_board
from livemig.services import Services


@pytest.fixture
def auth_settings(zookeeper, tmp_path):
    secret = tmp_path / "zk-auth"
    secret.write_text("livemig:zk-pa55-word\n")
    secret.chmod(0o600)
    return Settings(data_dir=str(tmp_path / "data"), zookeeper_hosts=zookeeper.hosts,
                    zookeeper_root=f"/auth-{uuid.uuid4().hex[:8]}", zookeeper_auth=str(secret))


def other_client(zookeeper, auth=None) -> KazooClient:
    client = KazooClient(hosts=zookeeper.hosts, auth_data=auth or [])
    client.start(timeout=10)
    return client


def test_reservations_and_jobs_are_out_of_reach_without_the_credentials(zookeeper, auth_settings):
    root = auth_settings.zookeeper_root
    reservations = ZookeeperReservations(auth_settings)
    board = open_board(Services(auth_settings), watch_jobs=False)
    try:
        assert reservations.try_reserve(7, "vm-7", [HostLimit("h1", 1)]) is None
        for auth in ([], [("digest", "livemig:wrong")]):
            stranger = other_client(zookeeper, auth)
            try:
                with pytest.raises(NoAuthError):
                    stranger.delete(f"{root}/reservations/hosts/h1/7")
                with pytest.raises(NoAuthError):
                    stranger.delete(f"{root}/reservations/instances/vm-7")
                with pytest.raises(NoAuthError):
                    stranger.create(f"{root}/reservations/hosts/h1/8", b"vm-8")
                with pytest.raises(NoAuthError):
                    stranger.create(f"{root}/jobs/job", b"{}", sequence=True)
                with pytest.raises(NoAuthError):
                    stranger.get_children(f"{root}/jobs")
            finally:
                stranger.stop()
                stranger.close()
        # Still held, by livemig's own identity only.
        assert reservations.holders("h1") == [7]
        acls, _ = reservations.client.get_acls(f"{root}/jobs")
        assert [(a.id.scheme, a.id.id.split(":")[0]) for a in acls] == [("digest", "livemig")]
    finally:
        reservations.release(7, ["h1"])
        board.close()
        owner = other_client(zookeeper, [("digest", "livemig:zk-pa55-word")])
        owner.delete(root, recursive=True)
        owner.stop()
        owner.close()
        reservations.close()


def test_malformed_credentials_are_refused_without_echoing_them(zookeeper, auth_settings):
    with pytest.raises(InvalidInput) as refused:
        ZookeeperReservations(auth_settings.replace(zookeeper_auth="no-colon-secret")).holders("h1")
    assert "no-colon-secret" not in str(refused.value)
