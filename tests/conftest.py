from __future__ import annotations

import pytest

from livemig.config import Settings
from tests.fakecloud import FakeCloud


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), poll_interval_s=0.02, queue_timeout_s=5.0)


@pytest.fixture
def cloud(tmp_path, settings) -> FakeCloud:
    return FakeCloud.build(tmp_path, settings)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server for the whole session (started here, not assumed)."""
    from tests.servers import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def zookeeper():
    """A real ZooKeeper server for the whole session."""
    from tests.servers import zookeeper_server

    with zookeeper_server() as server:
        yield server


@pytest.fixture(autouse=True, scope="session")
def _quiet_kazoo():
    # kazoo narrates reconnects at WARNING; tests assert outcomes instead.
    import logging

    logging.getLogger("kazoo").setLevel(logging.ERROR)
