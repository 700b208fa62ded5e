"""build_fleet: the planners' Fleet read from a synced fake cloud and its
load samples: capacities, placeability, the allocation fallback, the window's
mean and peak, movability and the hosts each instance may go to."""
from __future__ import annotations

import datetime as dt

import pytest

import livemig
from livemig.errors import InvalidInput
from livemig.load.fleet import ALLOCATED, build_fleet
from livemig.persistence.database import database_for
from livemig.persistence.models import Host, Instance, LoadSample, Migration
from livemig.planning.model import HostCapacity
from livemig.states import MigrationStatus

NOW = dt.datetime(2026, 12, 3, 12, 0, 0)
CTX = livemig.admin_context("tests")


def sample(host: str, instance: str | None, seconds_ago: float, cpu: float, memory_mb: float,
           host_cpus: int = 16) -> LoadSample:
    return LoadSample(at=NOW - dt.timedelta(seconds=seconds_ago), host=host, instance_uuid=instance, cpu=cpu,
                      host_cpus=host_cpus, memory_used_mb=memory_mb, interval_s=60.0)


def fleet_of(db_settings, **kwargs):
    with database_for(db_settings.database_url).reading() as s:
        return build_fleet(s, now=NOW, **kwargs)


def test_hosts_carry_physical_and_allocatable_capacity_and_placeability(cloud, settings):
    db = database_for(settings.database_url)
    with db.session() as s:
        s.get(Host, "b").maintenance = True
        s.get(Host, "c").enabled = False
        s.get(Host, "a").max_concurrent_migrations = 3
    fleet = fleet_of(settings, window_s=3600, settings=settings.replace(host_idle_watts=80.0, host_peak_watts=300.0))
    a = fleet.hosts["a"]
    assert a == HostCapacity(name="a", zone="default", cpus=16.0, memory_mb=32768.0, alloc_vcpus=64.0,
                             alloc_memory_mb=32768.0, max_migrations=3, placeable=True, idle_watts=80.0,
                             peak_watts=300.0)
    assert not fleet.hosts["b"].placeable and not fleet.hosts["c"].placeable
    # Without settings, the model's defaults.
    assert fleet_of(settings, window_s=60).hosts["a"].idle_watts == HostCapacity.idle_watts


def test_an_instance_without_samples_falls_back_to_its_allocation(cloud, settings):
    fleet = fleet_of(settings, window_s=3600)
    vm = fleet.instances[cloud.vm]
    assert (vm.host, vm.vcpus, vm.memory_mb) == ("a", 1, 256)
    assert (vm.cpu_mean, vm.cpu_peak, vm.memory_used_mean_mb, vm.memory_used_peak_mb) == (1.0, 1.0, 256.0, 256.0)
    assert vm.measured is False and vm.movable is True


def test_samples_in_the_window_give_mean_and_peak_in_cores(cloud, settings):
    db = database_for(settings.database_url)
    with db.session() as s:
        s.add_all([
            sample("a", cloud.vm, 30, cpu=0.5 / 16, memory_mb=100),     # 0.5 cores
            sample("a", cloud.vm, 90, cpu=1.0 / 16, memory_mb=200),     # 1.0 cores
            # Sampled on an 8-CPU host before it moved: 0.25 of 8 = 2 cores.
            sample("b", cloud.vm, 150, cpu=0.25, memory_mb=120, host_cpus=8),
            sample("a", cloud.vm, 4000, cpu=1.0, memory_mb=250),        # outside a 1 h window
            sample("a", cloud.vm, -10, cpu=1.0, memory_mb=250),         # after `now`
            sample("a", None, 30, cpu=0.9, memory_mb=30000),           # the host's own sample
        ])
    vm = fleet_of(settings, window_s=3600).instances[cloud.vm]
    assert vm.measured is True
    assert vm.cpu_mean == pytest.approx((0.5 + 1.0 + 2.0) / 3) and vm.cpu_peak == pytest.approx(2.0)
    assert vm.memory_used_mean_mb == pytest.approx(140.0) and vm.memory_used_peak_mb == 200.0
    # A shorter window sees only the newest sample.
    short = fleet_of(settings, window_s=60).instances[cloud.vm]
    assert (short.cpu_mean, short.cpu_peak, short.memory_used_peak_mb) == (pytest.approx(0.5), pytest.approx(0.5), 100.0)
    # No sample in the window: the allocation again.
    assert fleet_of(settings, window_s=20).instances[cloud.vm].measured is False
    # Asked for allocations, the samples are ignored.
    assert fleet_of(settings, window_s=3600, metric_source=ALLOCATED).instances[cloud.vm].cpu_peak == 1.0


def test_unfinished_migrations_and_stopped_instances_are_not_movable(cloud, settings):
    other = cloud.driver.create_domain(cloud.uri("b"), "off1", state="shutoff")
    third = cloud.driver.create_domain(cloud.uri("c"), "paused1", state="paused")
    livemig.sync_hosts(CTX, settings=settings)
    db = database_for(settings.database_url)
    with db.session() as s:
        s.add(Migration(instance_uuid=cloud.vm, instance_name="vm1", source_host="a", dest_host="b",
                        status=MigrationStatus.RUNNING.value))
    fleet = fleet_of(settings, window_s=60)
    assert fleet.instances[cloud.vm].movable is False
    assert fleet.instances[other].movable is False
    assert fleet.instances[third].movable is True


def test_allowed_hosts_come_from_the_static_filters(cloud, settings):
    # vm1 uses br-guests; c lacks it, b is in another zone: only a (its own host) is left.
    cloud.driver.update_host(cloud.uri("c"), bridges=["br-other"])
    livemig.sync_hosts(CTX, settings=settings)
    db = database_for(settings.database_url)
    with db.session() as s:
        s.get(Host, "b").zone = "z2"
    fleet = fleet_of(settings, window_s=60)
    assert fleet.instances[cloud.vm].allowed_hosts == frozenset({"a"})
    assert fleet_of(settings, window_s=60, with_allowed_hosts=False).instances[cloud.vm].allowed_hosts is None
    with db.session() as s:
        s.get(Host, "b").zone = "default"
    cloud.driver.update_host(cloud.uri("c"), bridges=["br-guests"])
    livemig.sync_hosts(CTX, settings=settings)
    # Every placeable host may take it: None, as the model says.
    assert fleet_of(settings, window_s=60).instances[cloud.vm].allowed_hosts is None


def test_hosts_named_limit_the_fleet(cloud, settings):
    web = cloud.driver.create_domain(cloud.uri("b"), "web1")
    livemig.sync_hosts(CTX, settings=settings)
    fleet = fleet_of(settings, window_s=60, hosts=["b"])
    assert set(fleet.hosts) == {"b"} and set(fleet.instances) == {web}


@pytest.mark.parametrize("kwargs, message", [
    ({"window_s": 0}, "load window must be a positive"),
    ({"window_s": 60, "metric_source": "guess"}, "metric source must be one of measured, allocated"),
])
def test_bad_arguments_are_refused(cloud, settings, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        fleet_of(settings, **kwargs)


def test_deleted_instances_are_left_out(cloud, settings):
    db = database_for(settings.database_url)
    with db.session() as s:
        s.get(Instance, cloud.vm).state = "deleted"
    assert cloud.vm not in fleet_of(settings, window_s=60).instances
