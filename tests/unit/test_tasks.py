"""Each task's execute and revert, against the stateful fake driver, with
revert given both a real result and a Failure, and flow_failures shaped as
the engine shapes it (a dict keyed by atom name)."""
from __future__ import annotations

import threading

import pytest
from taskflow.types.failure import Failure

import livemig
from livemig.drivers.base import (
    DriverError, FilterConflict, MigrationAborted, MigrationOptions, MigrationTimedOut,
)
from livemig.errors import CpuIncompatible, HostDisabled, InsufficientCapacity, PrecheckFailed, QueueTimeout
from livemig.persistence.inventory import created_resources
from livemig.services import services_for
from livemig.tasks.cleanup import CleanUpSource, UpdateInstanceHost
from livemig.tasks.lifecycle import RollBackOrTerminateInstance
from livemig.tasks.migrate import DestinationHoldsCopy, DomainLost, MigrateDomain
from livemig.tasks.network import NetworkMissing, SetUpNetworkOnDestination
from livemig.tasks.precheck import CheckMigrationPrerequisites, MarkInstanceMigrating
from livemig.tasks.reservation import ReleaseHosts, ReserveHosts
from livemig.tasks.volumes import SetUpVolumesOnDestination, VolumeUnreachable

CTX = livemig.admin_context("tests")


def failure_of(exc: BaseException) -> Failure:
    try:
        raise exc
    except BaseException:
        return Failure()


@pytest.fixture
def mig(cloud):
    """A recorded (queued) migration of vm1 from a to b, and its store."""
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=cloud.settings)
    return {"migration_id": view.id, "instance_uuid": cloud.vm, "source_host": "a", "dest_host": "b"}


def make(cls, cloud, name="t"):
    return cls(services_for(cloud.settings), name=name)


# -- rollback-or-terminate ---------------------------------------------------------------------------

def test_rollback_leaves_vm_on_source_and_fails_migration(cloud, mig):
    task = make(RollBackOrTerminateInstance, cloud)
    task.revert(flow_failures={"migrate-domain": failure_of(DriverError("boom"))}, **mig)
    m = cloud.migration(mig["migration_id"])
    assert m.status == "failed" and "migrate-domain: boom" in m.error_reason
    assert cloud.instance().host == "a" and cloud.instance().state == "running"
    assert cloud.running_on() == ["a"]


def test_rollback_records_vm_that_reached_destination(cloud, mig):
    _prepare_destination(cloud, mig)
    cloud.driver.migrate(cloud.uri("a"), cloud.uri("b"), cloud.vm, MigrationOptions())
    task = make(RollBackOrTerminateInstance, cloud)
    task.revert(flow_failures={"clean-up-source": failure_of(RuntimeError("db blip"))}, **mig)
    assert cloud.migration(mig["migration_id"]).status == "failed"
    assert cloud.instance().host == "b" and cloud.instance().state == "running"


def test_vm_on_no_host_is_terminated_by_default(cloud, mig):
    cloud.driver.destroy_domain(cloud.uri("a"), cloud.vm)
    make(RollBackOrTerminateInstance, cloud).revert(
        flow_failures={"migrate-domain": failure_of(DomainLost("gone"))}, **mig)
    m = cloud.migration(mig["migration_id"])
    assert m.status == "error" and "no host" in m.error_reason
    assert cloud.instance().state == "deleted" and cloud.instance().host is None


def _move_behind_livemigs_back(cloud, host):
    dom = cloud.domains_on("a")[cloud.vm]
    cloud.driver.destroy_domain(cloud.uri("a"), cloud.vm)
    cloud.driver.update_host(cloud.uri(host), domains={**cloud.domains_on(host), cloud.vm: dom})


def test_vm_found_on_a_third_host_is_recorded_there_not_deleted(cloud, mig):
    _move_behind_livemigs_back(cloud, "c")  # neither the source (a) nor the destination (b)
    make(RollBackOrTerminateInstance, cloud).revert(
        flow_failures={"migrate-domain": failure_of(DomainLost("gone"))}, **mig)
    m = cloud.migration(mig["migration_id"])
    assert m.status == "failed" and "the VM keeps running on c" in m.error_reason
    assert (cloud.instance().host, cloud.instance().state) == ("c", "running") and cloud.running_on() == ["c"]
    assert any("neither the source nor the destination" in e.message for e in _events(cloud, mig))


def test_vm_on_neither_end_while_a_third_host_cannot_be_asked_is_not_deleted(cloud, mig, monkeypatch):
    monkeypatch.setattr("livemig.locator.DEFAULT_PATIENCE_S", 0.0)
    cloud.driver.destroy_domain(cloud.uri("a"), cloud.vm)
    cloud.driver.update_host(cloud.uri("c"), reachable=False)
    make(RollBackOrTerminateInstance, cloud).revert(
        flow_failures={"migrate-domain": failure_of(DomainLost("gone"))}, **mig)
    m = cloud.migration(mig["migration_id"])
    assert m.status == "error" and "c: unknown" in m.error_reason
    assert cloud.instance().state == "error"  # not "deleted": it may run on c


def test_a_vm_pmsuspended_on_its_source_stays_there_recorded_pmsuspended(cloud, mig):
    dom = cloud.domains_on("a")[cloud.vm]
    cloud.driver.update_host(cloud.uri("a"), domains={cloud.vm: {**dom, "state": "pmsuspended"}})
    make(RollBackOrTerminateInstance, cloud).revert(
        flow_failures={"migrate-domain": failure_of(DriverError("not running"))}, **mig)
    m = cloud.migration(mig["migration_id"])
    assert m.status == "failed" and "the VM stays pmsuspended on a" in m.error_reason
    assert (cloud.instance().host, cloud.instance().state) == ("a", "pmsuspended")
    assert cloud.domains_on("a")[cloud.vm]["state"] == "pmsuspended"


def test_vm_on_both_hosts_is_terminated_everywhere(cloud, mig):
    import copy as _copy
    dom = cloud.domains_on("a")[cloud.vm]
    with cloud.driver.world(cloud.uri("b")) as (world, path):
        world.host(path)["domains"][cloud.vm] = _copy.deepcopy(dom)
        world.touch(path)
    assert cloud.running_on() == ["a", "b"]
    make(RollBackOrTerminateInstance, cloud).revert(
        flow_failures={"migrate-domain": failure_of(DriverError("split"))}, **mig)
    assert cloud.running_on() == []
    assert cloud.migration(mig["migration_id"]).status == "error"
    assert cloud.instance().state == "deleted"


def test_mark_error_policy_keeps_crashed_vm_for_forensics(tmp_path, cloud):
    settings = cloud.settings.replace(unrecoverable_policy="mark-error")
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=settings)
    with cloud.driver.world(cloud.uri("a")) as (world, path):
        world.host(path)["domains"][cloud.vm]["state"] = "crashed"
        world.touch(path)
    task = RollBackOrTerminateInstance(services_for(settings), name="t")
    task.revert(migration_id=view.id, instance_uuid=cloud.vm, source_host="a", dest_host="b",
                flow_failures={"migrate-domain": failure_of(DriverError("crashed"))})
    assert cloud.migration(view.id).status == "error"
    assert cloud.instance().state == "error"
    assert cloud.vm in cloud.domains_on("a")  # kept


def test_abort_requested_ends_cancelled(cloud, mig):
    livemig.abort(CTX, mig["migration_id"], settings=cloud.settings)
    make(RollBackOrTerminateInstance, cloud).revert(
        flow_failures={"migrate-domain": failure_of(MigrationAborted("aborted"))}, **mig)
    assert cloud.migration(mig["migration_id"]).status == "cancelled"
    assert cloud.running_on() == ["a"]


# -- reservations ------------------------------------------------------------------------------------

def test_reserve_then_second_migration_on_same_host_times_out(cloud, mig):
    make(ReserveHosts, cloud).execute(**mig)
    assert sorted(cloud.reservations()) == [("a", mig["migration_id"]), ("b", mig["migration_id"])]
    make(ReserveHosts, cloud).execute(**mig)  # idempotent
    assert len(cloud.reservations()) == 2
    other = cloud.driver.create_domain(cloud.uri("c"), "vm2")
    livemig.sync_hosts(CTX, "c", settings=cloud.settings)
    view = livemig.create_migration(CTX, "vm2", "c", "b", settings=cloud.settings)
    with pytest.raises(QueueTimeout, match="host b is in 1 migration"):
        make(ReserveHosts, cloud).execute(view.id, other, "c", "b", queue_timeout_s=0.1)
    make(ReserveHosts, cloud).revert(**mig)
    assert cloud.reservations() == []
    make(ReserveHosts, cloud).execute(view.id, other, "c", "b", queue_timeout_s=0.1)
    make(ReleaseHosts, cloud).execute(view.id, "c", "b")
    assert cloud.reservations() == []


# -- precheck ----------------------------------------------------------------------------------------

def test_a_stale_controllers_reserve_revert_releases_nothing(cloud, mig):
    from livemig import fencing
    from livemig.runner import claim_migration

    services = services_for(cloud.settings)
    stale = claim_migration(services, mig["migration_id"])
    with fencing.claimed(mig["migration_id"], stale):
        make(ReserveHosts, cloud).execute(**mig)
    claim_migration(services, mig["migration_id"])  # another controller took the migration over
    with fencing.claimed(mig["migration_id"], stale), pytest.raises(fencing.Fenced):
        make(ReserveHosts, cloud).revert(**mig)
    assert sorted(cloud.reservations()) == [("a", mig["migration_id"]), ("b", mig["migration_id"])]


def test_capacity_counts_unfinished_incoming_migrations_only(cloud, mig):
    from livemig.prechecks import placed_on
    from livemig.states import MigrationStatus

    db = services_for(cloud.settings).db
    cloud.driver.create_domain(cloud.uri("c"), "vm2", memory_mb=512)
    livemig.sync_hosts(CTX, "c", settings=cloud.settings)
    with db.session() as session:
        before = placed_on(session, "b")
    incoming = livemig.create_migration(CTX, "vm2", "c", "b", settings=cloud.settings)
    with db.session() as session:
        during = placed_on(session, "b")
        own = placed_on(session, "b", exclude_migration=incoming.id)
        source = placed_on(session, "c")
    assert during.memory_mb == before.memory_mb + 512 and during.vcpus == before.vcpus + 1
    assert own == before  # a migration's own precheck does not count itself
    assert source.memory_mb == 512  # still resident on its source
    # The precheck of another migration into b (vm1's, counted in `before`
    # as incoming but not by itself) now sees the room taken: 128 MB free.
    cloud.driver.update_host(cloud.uri("b"), memory_mb=before.memory_mb - 256 + 512 + 128)
    with pytest.raises(InsufficientCapacity, match="memory MB needed 256, free 128"):
        make(CheckMigrationPrerequisites, cloud).execute(**mig)
    with db.session() as session:
        from livemig.persistence.inventory import set_migration_status
        set_migration_status(session, incoming.id, MigrationStatus.CANCELLED, "test")
    with db.session() as session:
        assert placed_on(session, "b") == before
    make(CheckMigrationPrerequisites, cloud).execute(**mig)


def test_precheck_passes_then_refuses_on_capacity_cpu_version_and_disabled(cloud, mig):
    task = make(CheckMigrationPrerequisites, cloud)
    task.execute(**mig)
    cloud.driver.update_host(cloud.uri("b"), memory_mb=128)
    with pytest.raises(InsufficientCapacity, match="memory MB needed 256"):
        task.execute(**mig)
    cloud.driver.update_host(cloud.uri("b"), memory_mb=32768, cpu_models=["pentium"])
    with pytest.raises(CpuIncompatible):
        task.execute(**mig)
    cloud.driver.update_host(cloud.uri("b"), cpu_models=["qemu64"], hypervisor_version=6000000)
    with pytest.raises(PrecheckFailed, match="older"):
        task.execute(**mig)
    cloud.driver.update_host(cloud.uri("b"), hypervisor_version=7002000)
    livemig.set_host_enabled(CTX, "b", False, "maintenance", settings=cloud.settings)
    with pytest.raises(HostDisabled, match="maintenance"):
        task.execute(**mig)


def _pause_on_a(cloud):
    dom = cloud.domains_on("a")[cloud.vm]
    cloud.driver.update_host(cloud.uri("a"), domains={**cloud.domains_on("a"), cloud.vm: {**dom, "state": "paused"}})


def test_precheck_refuses_a_vm_paused_on_its_source_and_says_so(cloud, mig):
    # Paused after the inventory last saw it (an operator's `virsh suspend`,
    # an I/O error with werror=stop): the hypervisor's word decides.
    _pause_on_a(cloud)
    with pytest.raises(PrecheckFailed, match=r"vm1 is not running on a \(hypervisor says: paused\)"):
        make(CheckMigrationPrerequisites, cloud).execute(**mig)
    assert cloud.domains_on("a")[cloud.vm]["state"] == "paused" and cloud.vm not in cloud.domains_on("b")
    assert cloud.instance().state == "running"  # the check changes nothing


def test_a_vm_recorded_paused_is_refused_before_anything_is_recorded(cloud):
    _pause_on_a(cloud)
    livemig.sync_hosts(CTX, settings=cloud.settings)
    with pytest.raises(PrecheckFailed, match="instance vm1 is paused, not running"):
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert cloud.last_migration() is None and cloud.domains_on("a")[cloud.vm]["state"] == "paused"


def test_mark_instance_migrating_and_revert(cloud, mig):
    task = make(MarkInstanceMigrating, cloud)
    previous = task.execute(mig["migration_id"], cloud.vm)
    assert previous == "running" and cloud.instance().state == "migrating"
    task.revert(previous, instance_uuid=cloud.vm)
    assert cloud.instance().state == "running"
    task.execute(mig["migration_id"], cloud.vm)
    task.revert(failure_of(RuntimeError("x")), instance_uuid=cloud.vm)
    assert cloud.instance().state == "running"


# -- volumes -----------------------------------------------------------------------------------------

def test_volume_setup_defines_secret_once_and_revert_removes_only_it(cloud, mig):
    task = make(SetUpVolumesOnDestination, cloud, "set-up-volumes-on-destination")
    result = task.execute(**mig)
    assert result["secrets"] == ["vol-1"]
    assert cloud.host_record("b")["secrets"]["vol-1"]["value"] == "s3cret"
    assert task.execute(**mig)["secrets"] == ["vol-1"]  # re-run: nothing new, still known as ours
    assert cloud.driver.call_count(cloud.uri("b"), "copy_secret") == 1
    task.revert(result, flow_failures={"x": failure_of(RuntimeError("later"))}, **mig)
    assert "vol-1" not in cloud.host_record("b")["secrets"]


def test_volume_revert_after_failure_keeps_preexisting_secret(cloud, mig):
    cloud.driver.update_host(cloud.uri("b"), secrets={"vol-1": {"type": "iscsi", "value": "s3cret"}})
    task = make(SetUpVolumesOnDestination, cloud, "set-up-volumes-on-destination")
    assert task.execute(**mig)["secrets"] == []
    task.revert(failure_of(RuntimeError("x")), flow_failures={}, **mig)
    assert "vol-1" in cloud.host_record("b")["secrets"]


def test_volume_revert_given_failure_removes_secret_created_before_the_failure(cloud, mig):
    cloud.driver.update_host(cloud.uri("b"), unreachable_portals=[])
    task = make(SetUpVolumesOnDestination, cloud, "set-up-volumes-on-destination")
    task.execute(**mig)
    # As after a crash: the engine only has a Failure, the secret exists.
    task.revert(failure_of(RuntimeError("killed")), flow_failures={}, **mig)
    assert "vol-1" not in cloud.host_record("b")["secrets"]


def test_unreachable_volume_refused(cloud, mig):
    cloud.driver.update_host(cloud.uri("b"), unreachable_portals=["127.0.0.1:3260"])
    with pytest.raises(VolumeUnreachable, match="unreachable from b"):
        make(SetUpVolumesOnDestination, cloud).execute(**mig)
    assert cloud.host_record("b")["secrets"] == {}


# -- network -----------------------------------------------------------------------------------------

def test_network_setup_defines_filter_and_revert_removes_it(cloud, mig):
    task = make(SetUpNetworkOnDestination, cloud, "set-up-network-on-destination")
    result = task.execute(**mig)
    assert result["filters"] == ["sg-web"]
    assert cloud.host_record("b")["filters"]["sg-web"] == cloud.host_record("a")["filters"]["sg-web"]
    task.revert(result, flow_failures={"migrate-domain": failure_of(DriverError("x"))}, **mig)
    assert "sg-web" not in cloud.host_record("b")["filters"]


def test_network_revert_keeps_filter_when_vm_runs_on_destination(cloud, mig):
    task = make(SetUpNetworkOnDestination, cloud, "set-up-network-on-destination")
    result = task.execute(**mig)
    make(SetUpVolumesOnDestination, cloud).execute(**mig)
    make(MigrateDomain, cloud, "migrate-domain").execute(**mig)
    task.revert(result, flow_failures={"clean-up-source": failure_of(RuntimeError("x"))}, **mig)
    assert "sg-web" in cloud.host_record("b")["filters"]


def test_missing_bridge_and_conflicting_filter_refused(cloud, mig):
    cloud.driver.update_host(cloud.uri("b"), bridges=[])
    with pytest.raises(NetworkMissing, match="bridge br-guests"):
        make(SetUpNetworkOnDestination, cloud).execute(**mig)
    cloud.driver.update_host(cloud.uri("b"), bridges=["br-guests"],
                             filters={"sg-web": "<filter name='sg-web'><rule action='drop'/></filter>"})
    with pytest.raises(FilterConflict):
        make(SetUpNetworkOnDestination, cloud).execute(**mig)


# -- migrate -----------------------------------------------------------------------------------------

def _prepare_destination(cloud, mig):
    make(SetUpVolumesOnDestination, cloud, "set-up-volumes-on-destination").execute(**mig)
    make(SetUpNetworkOnDestination, cloud, "set-up-network-on-destination").execute(**mig)


def test_migrate_moves_vm_and_rerun_does_not_migrate_again(cloud, mig):
    _prepare_destination(cloud, mig)
    task = make(MigrateDomain, cloud, "migrate-domain")
    task.execute(**mig)
    assert cloud.running_on() == ["b"]
    task.execute(**mig)
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1
    assert cloud.migration(mig["migration_id"]).status == "post-migrating"


def test_migrate_follows_a_job_started_before_a_crash(cloud, mig):
    _prepare_destination(cloud, mig)
    cloud.driver._start_migration(cloud.uri("a"), cloud.uri("b"), cloud.vm)  # as a dead controller left it
    make(MigrateDomain, cloud, "migrate-domain").execute(**mig)
    assert cloud.running_on() == ["b"]
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1


def test_migrate_fails_without_prepared_destination(cloud, mig):
    with pytest.raises(DriverError, match="referenced filter 'sg-web' is missing|no secret"):
        make(MigrateDomain, cloud, "migrate-domain").execute(**mig)
    assert cloud.running_on() == ["a"]


def test_migrate_revert_destroys_orphan_left_by_dead_destination(cloud, mig):
    _prepare_destination(cloud, mig)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "dest-died")
    task = make(MigrateDomain, cloud, "migrate-domain")
    with pytest.raises(DriverError, match="client socket is closed") as info:
        task.execute(**mig)
    assert cloud.domains_on("b")[cloud.vm]["state"] == "paused"
    task.revert(failure_of(info.value), flow_failures={"migrate-domain": failure_of(info.value)}, **mig)
    assert cloud.vm not in cloud.domains_on("b")
    assert cloud.running_on() == ["a"]


def _copy_on_b(cloud, incoming):
    """A paused copy of vm1 on b: an earlier attempt's incoming copy, or one
    that an operator suspended there (not a migration's)."""
    cloud.driver.create_domain(cloud.uri("b"), "vm1", uuid=cloud.vm, state="paused")
    if incoming:
        dom = {**cloud.domains_on("b")[cloud.vm], "incoming_from": cloud.uri("a")[len("fake://"):]}
        cloud.driver.update_host(cloud.uri("b"), domains={**cloud.domains_on("b"), cloud.vm: dom})


def test_migrate_replaces_a_stale_incoming_copy_on_the_destination(cloud, mig):
    _prepare_destination(cloud, mig)
    _copy_on_b(cloud, incoming=True)
    make(MigrateDomain, cloud, "migrate-domain").execute(**mig)
    assert cloud.running_on() == ["b"] and cloud.vm not in cloud.domains_on("a")


def test_migrate_never_destroys_a_copy_on_the_destination_that_is_not_incoming(cloud, mig):
    _prepare_destination(cloud, mig)
    _copy_on_b(cloud, incoming=False)
    task = make(MigrateDomain, cloud, "migrate-domain")
    with pytest.raises(DestinationHoldsCopy, match="b holds a paused copy of the VM that is not an incoming"):
        task.execute(**mig)
    assert cloud.domains_on("b")[cloud.vm]["state"] == "paused" and cloud.running_on() == ["a"]
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 0
    failure = failure_of(DestinationHoldsCopy("x"))
    task.revert(failure, flow_failures={"migrate-domain": failure}, **mig)
    assert cloud.domains_on("b")[cloud.vm]["state"] == "paused" and cloud.running_on() == ["a"]
    assert any("not an incoming migration; it is kept" in e.message for e in _events(cloud, mig))


def test_migrate_revert_keeps_an_incoming_copy_that_a_source_job_still_feeds(cloud, mig, monkeypatch):
    _prepare_destination(cloud, mig)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "hang")
    cloud.driver._start_migration(cloud.uri("a"), cloud.uri("b"), cloud.vm)  # a job runs, and goes on running:
    monkeypatch.setattr(type(cloud.driver), "abort_migration", lambda self, uri, uuid: False)  # the abort fails
    task = make(MigrateDomain, cloud, "migrate-domain")
    failure = failure_of(DriverError("x"))
    task.revert(failure, flow_failures={"migrate-domain": failure}, **mig)
    assert cloud.domains_on("b")[cloud.vm]["state"] == "paused"  # its migration job is not cut short


def _events(cloud, mig):
    import sqlalchemy as sa

    from livemig.persistence.database import database_for
    from livemig.persistence.models import Event

    with database_for(cloud.settings.database_url).session() as s:
        return list(s.scalars(sa.select(Event).where(Event.migration_id == mig["migration_id"])))


def test_migrate_abort_request_stops_a_hanging_migration(cloud, mig):
    _prepare_destination(cloud, mig)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "hang")
    timer = threading.Timer(0.3, lambda: livemig.abort(CTX, mig["migration_id"], settings=cloud.settings))
    timer.start()
    with pytest.raises(MigrationAborted):
        make(MigrateDomain, cloud, "migrate-domain").execute(**mig)
    timer.join()
    assert cloud.running_on() == ["a"] and cloud.vm not in cloud.domains_on("b")


def test_migrate_timeout_aborts(cloud, mig):
    settings = cloud.settings.replace(completion_timeout_min_s=0.3, completion_timeout_s_per_gib=0.1)
    _prepare_destination(cloud, mig)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "hang")
    with pytest.raises(MigrationTimedOut):
        MigrateDomain(services_for(settings), name="migrate-domain").execute(**mig)
    assert cloud.running_on() == ["a"]


def test_a_stale_controllers_monitor_neither_aborts_nor_retunes_the_job(cloud, mig, monkeypatch):
    from livemig import fencing
    from livemig.runner import claim_migration
    from livemig.tasks import migrate

    # It would abort the job on its timeout, and raise the downtime on its
    # schedule, but another controller claims the migration while it runs.
    settings = cloud.settings.replace(completion_timeout_min_s=0.6, completion_timeout_s_per_gib=0.0,
                                      downtime_steps=3, downtime_step_delay_s_per_gib=1.0)
    _prepare_destination(cloud, mig)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "hang")
    services = services_for(settings)
    stale = claim_migration(services, mig["migration_id"])
    report = migrate._ProgressReporter.__call__
    taken = []

    def taken_over_once_the_job_runs(self, progress):
        if not taken:  # another controller (thread) claims it
            claimer = threading.Thread(target=lambda: taken.append(claim_migration(services, mig["migration_id"])))
            claimer.start()
            claimer.join()
        report(self, progress)

    monkeypatch.setattr(migrate._ProgressReporter, "__call__", taken_over_once_the_job_runs)
    with fencing.claimed(mig["migration_id"], stale), pytest.raises(fencing.Fenced):
        MigrateDomain(services, name="migrate-domain").execute(**mig)
    assert taken
    job = cloud.domains_on("a")[cloud.vm]["job"]  # still running, for its new owner to follow
    assert job["max_downtime_ms"] == 100 and "job_outcome" not in cloud.domains_on("a")[cloud.vm]
    assert cloud.domains_on("b")[cloud.vm]["state"] == "paused"
    with fencing.claimed(mig["migration_id"], stale), pytest.raises(fencing.Fenced):
        MigrateDomain(services, name="migrate-domain").revert(
            None, flow_failures={"migrate-domain": failure_of(DriverError("x"))}, **mig)
    assert cloud.domains_on("a")[cloud.vm]["job"] and cloud.vm in cloud.domains_on("b")


def test_migrate_vm_gone_everywhere_is_domain_lost(cloud, mig):
    cloud.driver.destroy_domain(cloud.uri("a"), cloud.vm)
    with pytest.raises(DomainLost):
        make(MigrateDomain, cloud, "migrate-domain").execute(**mig)


# -- post-migrate ------------------------------------------------------------------------------------

def test_cleanup_keeps_source_objects_that_were_there_before_livemig(cloud, mig):
    _prepare_destination(cloud, mig)
    make(MigrateDomain, cloud, "migrate-domain").execute(**mig)
    make(UpdateInstanceHost, cloud).execute(mig["migration_id"], cloud.vm, "b")
    assert cloud.instance().host == "b"
    result = make(CleanUpSource, cloud).execute(**mig)
    assert result["removed"] == []
    assert "sg-web" in cloud.host_record("a")["filters"] and "vol-1" in cloud.host_record("a")["secrets"]


def test_cleanup_keeps_filter_another_vm_uses_and_records_problems(cloud, mig):
    from livemig.drivers.base import InterfaceInfo
    from livemig.host_resources import record_created
    db = services_for(cloud.settings).db
    for kind, name in (("filter", "sg-web"), ("secret", "vol-1")):  # as if livemig had defined them on a
        record_created(db, "a", kind, name, 0)
    cloud.driver.create_domain(cloud.uri("a"), "other", interfaces=[InterfaceInfo(mac="52:54:00:aa:00:02",
                                                                                  bridge="br-guests",
                                                                                  filter="sg-web")])
    _prepare_destination(cloud, mig)
    make(MigrateDomain, cloud, "migrate-domain").execute(**mig)
    cloud.driver.inject_fault(cloud.uri("a"), "undefine_secret", "error", "permission denied")
    result = make(CleanUpSource, cloud).execute(**mig)
    assert result["removed"] == []
    assert "sg-web" in cloud.host_record("a")["filters"]
    events = livemig.show_migration(mig["migration_id"], settings=cloud.settings).events
    assert any("could not remove secret vol-1" in e.message for e in events)
