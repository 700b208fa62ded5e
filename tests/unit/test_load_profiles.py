"""The fake driver's load curves and the counters it reports from them: a
counter read at two instants differs by the curve's area between them."""
from __future__ import annotations

import math

import pytest

from livemig.drivers import load_profiles as lp
from livemig.drivers.fake import FakeDriver, fake_uri
from livemig.errors import HostUnreachable, InvalidInput


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("profile", [lp.constant(1.5), lp.sine(2.0, 1.0, 600.0, 100.0), lp.step(0.5, 3.0, 50.0)])
def test_the_integral_is_the_area_under_the_curve(profile):
    # A midpoint sum over small slices agrees with the closed form.
    t0, t1, n = 0.0, 1000.0, 20_000
    width = (t1 - t0) / n
    numeric = sum(lp.value_at(profile, t0 + (i + 0.5) * width) for i in range(n)) * width
    assert lp.integral(profile, t0, t1) == pytest.approx(numeric, rel=1e-4)


@pytest.mark.parametrize("profile, message", [
    ({"shape": "square"}, "shape must be one of constant, sine, step"),
    ({"shape": "constant", "value": "lots"}, "value must be a number"),
    ({"shape": "constant", "value": 5.0}, r"leaves \[0, 4\]"),
    ({"shape": "sine", "mean": 1.0, "amplitude": 2.0, "period_s": 60}, r"leaves \[0, 4\]"),
    ({"shape": "sine", "mean": 1.0, "amplitude": 0.5, "period_s": 0}, "period_s > 0"),
    ({"shape": "step", "before": 0.0, "after": math.inf, "at": 3}, "after must be a number"),
])
def test_bad_profiles_are_refused(profile, message):
    with pytest.raises(InvalidInput, match=message):
        lp.check_profile(profile, 4.0)


@pytest.fixture
def fake(tmp_path):
    clock = Clock()
    driver = FakeDriver(clock=clock)
    uri = fake_uri(tmp_path, "h1")
    driver.create_host(uri, vcpus=8, memory_mb=8192)
    return driver, uri, clock


def test_domain_and_host_counters_follow_the_curves(fake):
    driver, uri, clock = fake
    busy = driver.create_domain(uri, "busy", vcpus=4, memory_mb=2048)
    idle = driver.create_domain(uri, "idle", vcpus=1, memory_mb=512)
    driver.create_domain(uri, "off", state="shutoff")
    driver.set_load(uri, busy, cpu=lp.constant(2.0), memory=lp.constant(1000.0))
    driver.set_load(uri, None, cpu=lp.constant(0.5), memory=lp.constant(300.0))
    first = {d.name: d for d in driver.domain_stats(uri)}
    host_first = driver.host_stats(uri)
    clock.t += 10.0
    second = {d.name: d for d in driver.domain_stats(uri)}
    host_second = driver.host_stats(uri)
    assert set(second) == {"busy", "idle"}  # only running domains
    assert second["busy"].cpu_time_ns - first["busy"].cpu_time_ns == pytest.approx(20e9)
    assert second["idle"].cpu_time_ns == first["idle"].cpu_time_ns
    assert (second["busy"].memory_used_mb, second["idle"].memory_used_mb) == (1000.0, 512.0)
    assert host_second.cpu_busy_ns - host_first.cpu_busy_ns == pytest.approx(25e9)
    assert (host_second.cpus, host_second.memory_total_mb, host_second.memory_used_mb) == (8, 8192.0, 1812.0)
    assert host_second.timestamp - host_first.timestamp == 10.0


def test_a_new_curve_carries_the_counter_on(fake):
    driver, uri, clock = fake
    dom = driver.create_domain(uri, "vm", vcpus=2)
    driver.set_load(uri, dom, cpu=lp.constant(1.0))
    clock.t += 5.0
    driver.set_load(uri, dom, cpu=lp.step(1.0, 2.0, clock.t + 5.0))
    clock.t += 10.0
    # 5 s at 1 core, then 5 s at 1 core, then 5 s at 2 cores.
    assert driver.domain_stats(uri)[0].cpu_time_ns == pytest.approx(20e9)
    with pytest.raises(InvalidInput, match=r"leaves \[0, 2\]"):
        driver.set_load(uri, dom, cpu=lp.constant(3.0))
    with pytest.raises(InvalidInput, match="no domain"):
        driver.set_load(uri, "nope", cpu=lp.constant(1.0))


def test_an_unreachable_host_says_so(fake):
    driver, uri, _ = fake
    driver.update_host(uri, reachable=False)
    with pytest.raises(HostUnreachable):
        driver.host_stats(uri)
    with pytest.raises(HostUnreachable):
        driver.domain_stats(uri)
