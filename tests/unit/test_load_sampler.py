"""The load sampler on fake hosts with load curves: the figures it writes,
a one-pass baseline, pruning, hosts that fail or hang, the conductor's loop,
and build_fleet reading what it wrote."""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time

import pytest
import sqlalchemy as sa

import livemig
from livemig.drivers import load_profiles as lp
from livemig.drivers.fake import FakeDriver
from livemig.load.fleet import build_fleet, host_loads
from livemig.load.sampler import Sampler, run_sampler, sample_if_due, to_datetime
from livemig.persistence.database import database_for
from livemig.persistence.models import LoadSample
from livemig.services import services_for

CTX = livemig.admin_context("tests")


class Clock:
    """The time the fake hosts' curves are read at; sleeping advances it."""

    def __init__(self):
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class OneDriver:
    """A driver registry that hands out one driver (the test's fake, on its clock)."""

    def __init__(self, driver):
        self.driver = driver

    def for_uri(self, uri: str):
        return self.driver


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def fake(clock):
    return FakeDriver(clock=clock)


def sampler_for(settings, fake, clock, **kwargs) -> Sampler:
    return Sampler(database_for(settings.database_url), OneDriver(fake), settings, clock=clock, sleep=clock.sleep,
                   **kwargs)


def sample_every(sampler: Sampler, clock: Clock, step_s: float, passes: int) -> None:
    """A baseline, then `passes` passes `step_s` apart on the test's clock."""
    sampler.sample(settle_s=0)
    for _ in range(passes):
        clock.t += step_s
        sampler.sample(settle_s=0)


def samples(settings) -> list[LoadSample]:
    with database_for(settings.database_url).reading() as s:
        return list(s.scalars(sa.select(LoadSample).order_by(LoadSample.at, LoadSample.host, LoadSample.instance_uuid)))


def test_two_readings_give_host_and_instance_utilisation(cloud, settings, fake, clock):
    fake.set_load(cloud.uri("a"), cloud.vm, cpu=lp.constant(0.8), memory=lp.constant(200.0))
    fake.set_load(cloud.uri("a"), None, cpu=lp.constant(0.2), memory=lp.constant(1000.0))
    sampler = sampler_for(settings, fake, clock)
    first = sampler.sample(settle_s=0)
    assert first.written == {} and samples(settings) == []  # a baseline only
    clock.t += 60
    report = sampler.sample(settle_s=0)
    # a: its own sample and vm1's; b and c: their own (no domains).
    assert report.written == {"a": 2, "b": 1, "c": 1} and report.skipped == {}
    rows = {(r.host, r.instance_uuid): r for r in samples(settings)}
    vm, a = rows[("a", cloud.vm)], rows[("a", None)]
    assert vm.cpu == pytest.approx(0.8 / 16) and vm.host_cpus == 16 and vm.memory_used_mb == 200.0
    assert a.cpu == pytest.approx(1.0 / 16) and a.memory_used_mb == 1200.0
    assert vm.interval_s == pytest.approx(60.0) and vm.at == to_datetime(clock.t)
    assert rows[("b", None)].cpu == 0.0


def test_one_pass_reads_twice_when_it_has_no_baseline(cloud, settings, fake, clock):
    fake.set_load(cloud.uri("a"), cloud.vm, cpu=lp.constant(1.0))
    report = sampler_for(settings, fake, clock).sample(settle_s=2.0)
    assert report.written == {"a": 2, "b": 1, "c": 1}
    vm = [r for r in samples(settings) if r.instance_uuid == cloud.vm]
    assert len(vm) == 1 and vm[0].cpu == pytest.approx(1.0 / 16) and vm[0].interval_s == pytest.approx(2.0)


def test_a_stale_baseline_is_read_again(cloud, settings, fake, clock):
    sampler = sampler_for(settings.replace(load_sample_interval_s=60.0), fake, clock)
    sampler.sample(settle_s=0)
    clock.t += 3600  # far past STALE_INTERVALS intervals: a fresh baseline, then a 1 s sample
    sampler.sample(settle_s=1.0)
    assert [r.interval_s for r in samples(settings)] == [pytest.approx(1.0)] * 4


def test_samples_older_than_the_history_are_pruned(cloud, settings, fake, clock):
    settings = settings.replace(load_history_s=600.0)
    sampler = sampler_for(settings, fake, clock)
    sampler.sample(settle_s=1.0)
    clock.t += 300
    sampler.sample(settle_s=0)
    assert len(samples(settings)) == 8
    clock.t += 400  # the first pass's samples are now 701 s old, the second's 400 s
    report = sampler.sample(settle_s=0)
    assert report.pruned == 4
    assert min(r.at for r in samples(settings)) == to_datetime(clock.t - 400)


def test_a_host_that_does_not_answer_is_skipped_and_the_others_sampled(cloud, settings, fake, clock, caplog):
    fake.update_host(cloud.uri("b"), reachable=False)
    with caplog.at_level(logging.WARNING, logger="livemig.load.sampler"):
        report = sample_if_due(sampler_for(settings, fake, clock), 60.0)
    assert set(report.written) == {"a", "c"} and "unreachable" in report.skipped["b"]
    assert "host b skipped: host b is unreachable" in caplog.text
    assert {r.host for r in samples(settings)} == {"a", "c"}


class HangingDriver:
    """A fake whose host b never answers (a hung hypervisor connection)."""

    def __init__(self, fake, hung_uri):
        self.fake, self.hung_uri, self.release = fake, hung_uri, threading.Event()

    def for_uri(self, uri):
        return self

    def host_stats(self, uri):
        if uri == self.hung_uri:
            self.release.wait(30)
        return self.fake.host_stats(uri)

    def domain_stats(self, uri):
        return self.fake.domain_stats(uri)


def test_a_hung_host_does_not_hold_up_the_others(cloud, settings, fake, clock):
    drivers = HangingDriver(fake, cloud.uri("b"))
    sampler = Sampler(database_for(settings.database_url), drivers, settings, clock=clock, sleep=clock.sleep,
                      host_timeout_s=0.3)
    started = time.monotonic()
    try:
        report = sampler.sample(settle_s=1.0)
    finally:
        drivers.release.set()
    # Two reads of the others, each waiting at most the timeout for b.
    assert time.monotonic() - started < 5
    assert set(report.written) == {"a", "c"} and report.skipped == {"b": "no answer in 0.3 s"}


def test_a_named_host_only(cloud, settings, fake, clock):
    report = sampler_for(settings, fake, clock).sample(hosts=["c"], settle_s=1.0)
    assert report.written == {"c": 1}


def test_build_fleet_reads_mean_and_peak_of_a_sine_curve(cloud, settings, fake, clock):
    # 1.5 cores +- 1 over 10 minutes, sampled every 30 s for 20 minutes.
    uuid = fake.create_domain(cloud.uri("a"), "wavy", vcpus=4, memory_mb=512)
    fake.set_load(cloud.uri("a"), uuid, cpu=lp.sine(1.5, 1.0, 600.0), memory=lp.sine(150.0, 50.0, 600.0))
    livemig.sync_hosts(CTX, settings=settings)
    sample_every(sampler_for(settings, fake, clock), clock, 30, passes=40)
    with database_for(settings.database_url).reading() as s:
        vm = build_fleet(s, window_s=1200, now=to_datetime(clock.t)).instances[uuid]
        a = host_loads(s, to_datetime(clock.t - 1200), to_datetime(clock.t))["a"]
    assert vm.measured
    assert vm.cpu_mean == pytest.approx(1.5, abs=0.02)
    # The peak of 30 s averages sits a little under the curve's 2.5.
    assert 2.4 < vm.cpu_peak <= 2.5
    assert vm.memory_used_mean_mb == pytest.approx(150.0, abs=3) and vm.memory_used_peak_mb == pytest.approx(200.0, abs=1)
    assert a.samples == 40 and a.cpu_mean == pytest.approx(1.5, abs=0.02)


def test_build_fleet_sees_a_step_only_in_a_window_after_it(cloud, settings, fake, clock):
    fake.set_load(cloud.uri("a"), cloud.vm, cpu=lp.step(0.1, 0.9, clock.t + 600))
    sample_every(sampler_for(settings, fake, clock), clock, 60, passes=20)
    with database_for(settings.database_url).reading() as s:
        recent = build_fleet(s, window_s=300, now=to_datetime(clock.t)).instances[cloud.vm]
        whole = build_fleet(s, window_s=1200, now=to_datetime(clock.t)).instances[cloud.vm]
    assert recent.cpu_mean == pytest.approx(0.9) and recent.cpu_peak == pytest.approx(0.9)
    assert whole.cpu_mean == pytest.approx(0.5) and whole.cpu_peak == pytest.approx(0.9)


def test_the_loop_samples_until_stopped(cloud, settings):
    services = services_for(settings)
    sampler = Sampler(services.db, services.drivers, settings)
    stop = threading.Event()
    thread = threading.Thread(target=run_sampler, args=(sampler, 0.2, stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len([r for r in samples(settings) if r.host == "a"]) < 3:
        time.sleep(0.05)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert len([r for r in samples(settings) if r.host == "a"]) >= 3


def test_a_pass_is_skipped_when_another_sampler_wrote_recently(cloud, settings, fake, clock):
    sampler_for(settings, fake, clock).sample(settle_s=1.0)
    other = sampler_for(settings, fake, clock)
    clock.t += 20
    assert sample_if_due(other, 60.0) is None  # 20 s old: under half of 60
    clock.t += 20
    assert sample_if_due(other, 60.0).written == {"a": 2, "b": 1, "c": 1}
