"""A conductor samples the fleet's load while it runs (a daemon thread, at
load_sample_interval_s) and stops sampling when it stops."""
from __future__ import annotations

import threading
import time
import uuid

import sqlalchemy as sa

from livemig.jobs import run_conductor
from livemig.persistence.database import database_for
from livemig.persistence.models import LoadSample
from livemig.services import services_for
from tests.fakecloud import FakeCloud


def _samples(settings) -> int:
    with database_for(settings.database_url).reading() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(LoadSample))


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("load sampler")]


def test_a_conductor_samples_while_it_runs_and_stops_with_it(tmp_path, settings, zookeeper):
    settings = settings.replace(zookeeper_hosts=zookeeper.hosts, zookeeper_session_timeout=2.0,
                                zookeeper_root=f"/load-{uuid.uuid4().hex[:8]}", load_sample_interval_s=0.5)
    FakeCloud.build(tmp_path, settings)
    stop = threading.Event()
    thread = threading.Thread(target=run_conductor, args=(services_for(settings),),
                              kwargs={"name": "c1", "stop_event": stop}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        # Three hosts and vm1: 4 samples a pass; wait for a second pass.
        while _samples(settings) < 8:
            assert time.monotonic() < deadline, _samples(settings)
            time.sleep(0.1)
        assert [t.name for t in _sampler_threads()] == ["livemig-c1 load sampler"]
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and _sampler_threads() == []
    count = _samples(settings)
    time.sleep(1.2)
    assert _samples(settings) == count
