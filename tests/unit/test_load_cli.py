"""`livemig host sync --stats` and the measured columns of `livemig
resources`, as an operator runs them (real processes, a fake cloud whose
guest follows a load curve)."""
from __future__ import annotations

import json

import sqlalchemy as sa

from livemig.drivers import load_profiles as lp
from livemig.persistence.database import database_for
from livemig.persistence.models import LoadSample
from tests.unit.test_cli import run


def test_sync_stats_samples_and_resources_shows_allocated_and_measured(cloud):
    # vm1 (1 vCPU, 256 MB on a) busy at 0.75 cores using 200 MiB; a itself uses 0.25 cores and 1000 MiB.
    cloud.driver.set_load(cloud.uri("a"), cloud.vm, cpu=lp.constant(0.75), memory=lp.constant(200.0))
    cloud.driver.set_load(cloud.uri("a"), None, cpu=lp.constant(0.25), memory=lp.constant(1000.0))
    proc = run(cloud.settings, "host", "sync", "--stats", "--settle", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["a: 1 instance(s)", "b: 0 instance(s)", "c: 0 instance(s)",
                                        "a: 2 load sample(s)", "b: 1 load sample(s)", "c: 1 load sample(s)"]
    lines = json.loads(run(cloud.settings, "resources", "a", "--format", "json").stdout)
    used = next(line for line in lines if line["kind"] == "USED")
    node = next(line for line in lines if line["kind"] == "NODE")
    assert (used["vcpus"], used["memory_mb"], used["samples"]) == (1, 256, 1)
    assert used["cpu_mean"] == used["cpu_peak"] == 1.0 and used["memory_mean_mb"] == 1200.0
    assert (node["project"], node["cpu_mean"], node["cpu_peak"], node["memory_peak_mb"]) == ("p1", 0.75, 0.75, 200.0)
    total = next(line for line in lines if line["kind"] == "TOTAL")
    assert total["cpu_mean"] is None and total["samples"] == 0
    table = run(cloud.settings, "resources").stdout.splitlines()
    assert table[0].split() == ["KIND", "HOST", "PROJECT", "VCPUS", "MEMORY_MB", "DISK_GB", "CPU_MEAN", "CPU_PEAK",
                                "MEM_MEAN_MB", "MEM_PEAK_MB"]
    assert table[1].split() == ["TOTAL", "a", "16", "32768", "500"]
    assert table[2].split() == ["USED", "a", "1", "256", "1", "1.0", "1.0", "1200.0", "1200.0"]
    assert table[3].split() == ["NODE", "a", "p1", "1", "256", "1", "0.75", "0.75", "200.0", "200.0"]
    assert table[5].split() == ["USED", "b", "0", "0", "0", "0.0", "0.0", "0.0", "0.0"]


def test_a_window_with_no_samples_shows_allocations_only(cloud):
    assert run(cloud.settings, "host", "sync", "--stats", "--settle", "0.2").returncode == 0
    with database_for(cloud.settings.database_url).session() as s:
        for sample in s.scalars(sa.select(LoadSample)):
            sample.at = sample.at.replace(year=sample.at.year - 1)
    lines = json.loads(run(cloud.settings, "resources", "a", "--window", "30m", "--format", "json").stdout)
    assert [(line["kind"], line["cpu_mean"], line["samples"]) for line in lines] == [
        ("TOTAL", None, 0), ("USED", None, 0), ("NODE", None, 0)]


def test_sync_stats_warns_of_a_host_that_stops_answering(cloud):
    # a answers the inventory sync, then not the sampler's readings.
    cloud.driver.inject_fault(cloud.uri("a"), "host_stats", "unreachable", "link down", times=5)
    proc = run(cloud.settings, "host", "sync", "--stats", "--settle", "0.2")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "livemig: warning: a: no load sample: host a is unreachable: link down"
    assert "b: 1 load sample(s)" in proc.stdout and "a: 2 load sample(s)" not in proc.stdout
