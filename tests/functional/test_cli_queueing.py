"""`livemig migrate --no-wait` with ZooKeeper returns once posted and still
queues; `--no-queue` fails at once (real ZooKeeper, a real conductor)."""
from __future__ import annotations

import subprocess
import sys

import livemig
from tests.fakecloud import FakeCloud
from tests.functional.test_conductors import ROOT, conductors, wait_finished, zk_settings  # noqa: F401

CTX = livemig.admin_context("tests")


def cli(conductors, *args):
    return subprocess.run([sys.executable, "-m", "livemig.cli", *args], cwd=ROOT, env=conductors.env(),
                          capture_output=True, text=True, timeout=60)


def test_no_wait_burst_queues_for_a_busy_host_and_no_queue_fails_at_once(tmp_path, zk_settings, conductors):
    cloud = FakeCloud.build(tmp_path, zk_settings, migration_seconds=1.0)
    vm2 = cloud.driver.create_domain(cloud.uri("c"), "vm2", memory_mb=256)
    livemig.sync_hosts(CTX, "c", settings=zk_settings)
    # Both into b, whose limit is one migration: the second must wait its turn.
    posted = [cli(conductors, "migrate", "--live", "--no-wait", "--format", "json", src, vm, "b")
              for src, vm in (("a", "vm1"), ("c", "vm2"))]
    assert [p.returncode for p in posted] == [0, 0], [p.stderr for p in posted]
    ids = [livemig.list_migrations(settings=zk_settings)[i].id for i in (1, 0)]
    conductors.start("c1")
    assert [v.status for v in wait_finished(zk_settings, ids)] == ["completed", "completed"]
    assert cloud.running_on() == ["b"] and cloud.running_on(vm2) == ["b"]
    # b is free now; hold it, and --no-queue gives up at once.
    from livemig.coordination.base import HostLimit
    from livemig.services import services_for
    services_for(zk_settings).reservations.try_reserve(999, "someone-else", [HostLimit("a", 1)])
    refused = cli(conductors, "migrate", "--live", "--no-queue", "b", "vm1", "a")
    assert refused.returncode == 1 and "host a is in 1 migration(s), its limit is 1" in refused.stderr
    assert cloud.running_on() == ["b"]
    services_for(zk_settings).reservations.release(999, ["a"])
