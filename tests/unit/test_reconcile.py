"""`livemig reconcile` on the fake cloud: each kind of disagreement is found,
a dry run changes nothing, and --apply leaves the world consistent."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import sqlalchemy as sa

import livemig
from livemig.persistence.database import database_for
from livemig.persistence.inventory import record_leftover, set_migration_status
from livemig.persistence.models import Instance, Leftover, Reservation
from livemig.runner import run_lock
from livemig.services import services_for
from livemig.states import MigrationStatus

CTX = livemig.admin_context("tests")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kinds(report):
    return sorted(f.kind for f in report.findings)


def reconcile(cloud, apply=False):
    return livemig.reconcile(CTX, apply=apply, grace_s=0, settings=cloud.settings)


def finished_migration(cloud):
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert cloud.running_on() == ["b"]
    return view.id


def test_a_consistent_world_has_no_findings(cloud):
    finished_migration(cloud)
    report = reconcile(cloud, apply=True)
    assert report.findings == [] and report.remaining == []


def test_reservation_of_a_finished_migration_is_released(cloud):
    mid = finished_migration(cloud)
    # A revert that could not release them (item 4) leaves them behind.
    with database_for(cloud.settings.database_url).session() as s:
        s.add_all([Reservation(host="a", migration_id=mid, instance_uuid=cloud.vm),
                   Reservation(host="b", migration_id=mid, instance_uuid=cloud.vm)])
        record_leftover(s, "reservation", f"migration {mid}", "release kept failing", migration_id=mid)
    report = reconcile(cloud)
    assert kinds(report) == ["reservation-of-finished-migration"]
    assert report.findings[0].safe
    assert sorted(cloud.reservations()) == [("a", mid), ("b", mid)]  # the dry run changed nothing
    report = reconcile(cloud, apply=True)
    assert report.remaining == []
    assert cloud.reservations() == []
    with database_for(cloud.settings.database_url).session() as s:
        assert [lo.resolution for lo in s.scalars(sa.select(Leftover))] == ["reservations released by reconcile"]
    # The released host takes a new migration.
    livemig.migrate(CTX, "vm1", "b", "a", settings=cloud.settings)
    assert cloud.running_on() == ["a"]


def _set_instance(cloud, **values):
    with database_for(cloud.settings.database_url).session() as s:
        inst = s.get(Instance, cloud.vm)
        for k, v in values.items():
            setattr(inst, k, v)


def test_instance_stuck_in_migrating_is_recorded_where_its_vm_runs(cloud):
    _set_instance(cloud, state="migrating")
    report = reconcile(cloud)
    assert kinds(report) == ["instance-stuck-migrating"] and report.findings[0].safe
    assert cloud.instance().state == "migrating"
    reconcile(cloud, apply=True)
    assert (cloud.instance().host, cloud.instance().state) == ("a", "running")
    assert reconcile(cloud).findings == []


def _paused_copy(cloud, host, incoming):
    """A paused copy of vm1 on `host`: a migration's incoming copy (from a), or
    one paused by somebody else (an operator's `virsh suspend`)."""
    cloud.driver.create_domain(cloud.uri(host), "vm1", uuid=cloud.vm, state="paused")
    if incoming:
        dom = {**cloud.domains_on(host)[cloud.vm], "incoming_from": cloud.uri("a")[len("fake://"):]}
        cloud.driver.update_host(cloud.uri(host), domains={**cloud.domains_on(host), cloud.vm: dom})


def test_paused_incoming_copy_of_a_vm_running_on_its_source_is_destroyed(cloud):
    _paused_copy(cloud, "b", incoming=True)
    with database_for(cloud.settings.database_url).session() as s:
        record_leftover(s, "domain", cloud.vm, "revert gave up waiting for b", host="b", migration_id=None)
    report = reconcile(cloud)
    assert kinds(report) == ["paused-copy-of-vm-running-elsewhere"]  # the leftover is that finding's
    assert not report.findings[0].safe
    assert cloud.vm in cloud.domains_on("b")
    report = reconcile(cloud, apply=True)
    assert report.remaining == []
    assert cloud.vm not in cloud.domains_on("b") and cloud.running_on() == ["a"]
    with database_for(cloud.settings.database_url).session() as s:
        assert all(lo.resolved_at is not None for lo in s.scalars(sa.select(Leftover)))


def test_a_paused_copy_that_is_not_an_incoming_migration_is_never_destroyed(cloud):
    # An operator suspended a copy on b (say, kept for forensics): it may hold
    # the VM's newest state, so only an operator chooses which copy to keep.
    _paused_copy(cloud, "b", incoming=False)
    report = reconcile(cloud, apply=True)
    assert kinds(report) == ["suspended-copy-of-vm-running-elsewhere"]
    assert report.findings[0].action == "none" and report.remaining == report.findings
    assert cloud.domains_on("b")[cloud.vm]["state"] == "paused" and cloud.running_on() == ["a"]


def test_an_incoming_copy_resumed_by_an_operator_before_the_repair_is_not_destroyed(cloud):
    from livemig import reconciliation

    _paused_copy(cloud, "b", incoming=True)
    findings = reconciliation.compare(reconciliation.take_snapshot(services_for(cloud.settings), 0))
    assert [f.action for f in findings] == ["destroy-copy"]
    # Between the look and the repair the copy stopped being an incoming one
    # (its migration was cancelled, and someone kept it, still paused).
    dom = dict(cloud.domains_on("b")[cloud.vm])
    dom.pop("incoming_from")
    cloud.driver.update_host(cloud.uri("b"), domains={**cloud.domains_on("b"), cloud.vm: dom})
    reconciliation.apply_findings(services_for(cloud.settings), findings)
    assert findings[0].outcome == "skipped: the copy on b is paused, but not an incoming migration now"
    assert cloud.vm in cloud.domains_on("b")


def test_a_copy_that_starts_running_before_the_repair_is_not_destroyed(cloud, monkeypatch):
    _paused_copy(cloud, "b", incoming=True)
    from livemig import reconciliation

    findings = reconciliation.compare(reconciliation.take_snapshot(services_for(cloud.settings), 0))
    # Between the look and the repair, the VM moved to b (the source copy went away).
    cloud.driver.destroy_domain(cloud.uri("a"), cloud.vm)
    cloud.driver.update_host(cloud.uri("b"), domains={**cloud.domains_on("b"),
                                                      cloud.vm: {**cloud.domains_on("b")[cloud.vm],
                                                                 "state": "running"}})
    reconciliation.apply_findings(services_for(cloud.settings), findings)
    assert findings[0].outcome.startswith("skipped")
    assert cloud.running_on() == ["b"]


def test_vm_on_an_unexpected_host_is_recorded_there(cloud):
    # The VM was moved behind livemig's back.
    dom = cloud.domains_on("a")[cloud.vm]
    cloud.driver.destroy_domain(cloud.uri("a"), cloud.vm)
    cloud.driver.update_host(cloud.uri("c"), domains={cloud.vm: dom})
    report = reconcile(cloud)
    assert kinds(report) == ["vm-on-unexpected-host"] and cloud.instance().host == "a"
    reconcile(cloud, apply=True)
    assert (cloud.instance().host, cloud.instance().state) == ("c", "running")
    with database_for(cloud.settings.database_url).session() as s:
        notes = list(s.scalars(sa.select(Leftover)))
    assert [(lo.kind, lo.host, lo.name) for lo in notes] == [("domain", "c", cloud.vm)]
    assert notes[0].resolved_at is not None and "said a" in notes[0].reason


def _die_in(settings, migration_id, step, when):
    env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=ROOT, LIVEMIG_POLL_INTERVAL_S="0.02")
    env.pop("LIVEMIG_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "tests.helpers_die", settings.data_dir, str(migration_id), step,
                           when], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr


def test_unfinished_migration_that_nobody_runs_is_resumed(cloud):
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=cloud.settings)
    _die_in(cloud.settings, view.id, "migrate-domain", "after")
    assert cloud.migration(view.id).status == "post-migrating" and cloud.instance().state == "migrating"
    # While a process holds its run lock, somebody runs it: nothing to do.
    services = services_for(cloud.settings)
    with run_lock(services, view.id):
        assert reconcile(cloud, apply=True).findings == []
    report = reconcile(cloud)
    # Its instance and reservations are the migration's: one finding.
    assert kinds(report) == ["unfinished-migration-nobody-runs"]
    assert cloud.migration(view.id).status == "post-migrating"
    report = reconcile(cloud, apply=True)
    assert report.remaining == [], report.to_dict()
    assert cloud.migration(view.id).status == "completed"
    assert cloud.running_on() == ["b"] and cloud.instance().host == "b" and cloud.reservations() == []
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1  # not migrated twice


def test_a_recently_active_migration_is_left_alone(cloud):
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=cloud.settings)
    report = livemig.reconcile(CTX, apply=True, grace_s=60, settings=cloud.settings)
    assert report.findings == [] and cloud.migration(view.id).status == "queued"


def test_an_unreachable_host_is_unknown_not_absent(cloud):
    mid_row = livemig.create_migration(CTX, "vm1", "a", "b", settings=cloud.settings).id
    _set_instance(cloud, state="migrating")
    cloud.driver.update_host(cloud.uri("c"), reachable=False)
    with database_for(cloud.settings.database_url).session() as s:
        set_migration_status(s, mid_row, MigrationStatus.CANCELLED, "test")
        s.add(Reservation(host="b", migration_id=mid_row, instance_uuid=cloud.vm))
    report = reconcile(cloud, apply=True)
    by_kind = {f.kind: f for f in report.findings}
    assert by_kind["host-unreachable"].disagreement.startswith("cannot check host c")
    # The VM might run on c too: its inventory is not touched ...
    assert by_kind["instance-stuck-migrating"].outcome is None
    assert cloud.instance().state == "migrating"
    # ... while what does not depend on c is repaired.
    assert by_kind["reservation-of-finished-migration"].repaired and cloud.reservations() == []
    assert sorted(f.kind for f in report.remaining) == ["host-unreachable", "instance-stuck-migrating"]


def test_non_admin_may_look_but_not_apply(cloud):
    import pytest

    from livemig.errors import NotAuthorized

    user = livemig.RequestContext(user="bob", roles=())
    _set_instance(cloud, state="migrating")
    assert kinds(livemig.reconcile(user, settings=cloud.settings)) == ["instance-stuck-migrating"]
    with pytest.raises(NotAuthorized):
        livemig.reconcile(user, apply=True, settings=cloud.settings)
    assert cloud.instance().state == "migrating"


def _cli(settings, *args):
    env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=ROOT)
    env.pop("LIVEMIG_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "livemig.cli", "reconcile", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_json_output_and_exit_codes(cloud):
    proc = _cli(cloud.settings, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["findings"] == []
    _set_instance(cloud, state="migrating")
    proc = _cli(cloud.settings, "--format", "json")
    assert proc.returncode == 8, proc.stderr
    report = json.loads(proc.stdout)
    assert report["applied"] is False and report["remaining"] == 1
    assert report["findings"][0]["kind"] == "instance-stuck-migrating"
    assert report["findings"][0]["repair"] == "record it running on a"
    assert cloud.instance().state == "migrating"
    proc = _cli(cloud.settings, "--dry-run")
    assert proc.returncode == 8 and "dry run: nothing changed" in proc.stdout
    assert cloud.instance().state == "migrating"
    proc = _cli(cloud.settings, "--apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "outcome: repaired: instance recorded running on a" in proc.stdout
    assert cloud.instance().state == "running"
    proc = _cli(cloud.settings, "--grace", "-1")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_a_vm_missing_everywhere_and_an_unknown_vm_are_reported_not_guessed(cloud):
    cloud.driver.destroy_domain(cloud.uri("a"), cloud.vm)
    stranger = cloud.driver.create_domain(cloud.uri("c"), "stranger")
    report = reconcile(cloud, apply=True)
    assert kinds(report) == ["vm-missing", "vm-not-in-inventory"]
    assert cloud.instance().host == "a"  # not guessed away
    with database_for(cloud.settings.database_url).session() as s:
        assert [(lo.kind, lo.host, lo.name) for lo in s.scalars(sa.select(Leftover))] == [("domain", "c", stranger)]
    # Seen again: one finding, no repair left to make.
    again = reconcile(cloud, apply=True)
    assert kinds(again) == ["vm-missing", "vm-not-in-inventory"] and all(f.action == "none" for f in again.findings)


def test_unfinished_migration_whose_flow_is_gone_is_ended_by_an_operator_only(cloud):
    from livemig.persistence.models import Migration

    mid = livemig.create_migration(CTX, "vm1", "a", "b", settings=cloud.settings).id
    with database_for(cloud.settings.database_url).session() as s:
        s.get(Migration, mid).logbook_id = None
    services = services_for(cloud.settings)
    from livemig import reconciliation

    report = reconciliation.reconcile(services, apply=True, only_safe=True, grace_s=0)  # a conductor's part
    assert kinds(report) == ["unfinished-migration-not-resumable"]
    assert report.findings[0].outcome.startswith("skipped") and cloud.migration(mid).status == "queued"
    report = reconcile(cloud, apply=True)
    assert report.remaining == []
    assert cloud.migration(mid).status == "error" and "ended by reconcile" in cloud.migration(mid).error_reason
    assert (cloud.instance().host, cloud.instance().state) == ("a", "running") and cloud.running_on() == ["a"]


def _unresumable_migration(cloud):
    from livemig.persistence.models import Migration

    mid = livemig.create_migration(CTX, "vm1", "a", "b", settings=cloud.settings).id
    with database_for(cloud.settings.database_url).session() as s:
        s.get(Migration, mid).logbook_id = None
    return mid


def test_ending_a_migration_whose_vm_is_on_a_third_host_records_it_there(cloud):
    mid = _unresumable_migration(cloud)
    # Moved behind livemig's back, to neither end of the migration.
    dom = cloud.domains_on("a")[cloud.vm]
    cloud.driver.destroy_domain(cloud.uri("a"), cloud.vm)
    cloud.driver.update_host(cloud.uri("c"), domains={cloud.vm: dom})
    report = reconcile(cloud, apply=True)
    assert report.remaining == [], report.to_dict()
    assert (cloud.instance().host, cloud.instance().state) == ("c", "running")
    reason = cloud.migration(mid).error_reason
    assert cloud.migration(mid).status == "error"
    assert "the VM is running on c, neither its source a nor its destination b" in reason
    with database_for(cloud.settings.database_url).session() as s:
        from livemig.persistence.models import Event

        notes = [e.message for e in s.scalars(sa.select(Event).where(Event.migration_id == mid, Event.kind == "note"))]
    assert any("inventory follows it" in n for n in notes)


def test_ending_a_migration_fences_a_stale_conductor_that_wakes_later(cloud):
    import pytest

    from livemig import fencing
    from livemig.runner import claim_migration

    mid = _unresumable_migration(cloud)
    services = services_for(cloud.settings)
    stale_epoch = claim_migration(services, mid)  # a conductor claimed it, then froze
    report = reconcile(cloud, apply=True)
    assert report.remaining == [] and cloud.migration(mid).status == "error"
    assert cloud.migration(mid).claim_epoch > stale_epoch
    # It wakes: the check it makes before any destructive action refuses.
    with fencing.claimed(mid, stale_epoch), pytest.raises(fencing.Fenced):
        fencing.ensure_current_claim(services.db, mid)
    assert cloud.running_on() == ["a"]


def test_a_pmsuspended_copy_of_a_vm_running_elsewhere_is_reported_as_such_and_kept(cloud):
    cloud.driver.create_domain(cloud.uri("b"), "vm1", uuid=cloud.vm, state="pmsuspended")
    report = reconcile(cloud, apply=True)
    assert kinds(report) == ["suspended-copy-of-vm-running-elsewhere"]
    assert "a pmsuspended copy on b" in report.findings[0].disagreement
    assert cloud.domains_on("b")[cloud.vm]["state"] == "pmsuspended"


def test_a_shut_off_duplicate_is_reported_and_kept(cloud):
    # A stale definition of vm1 on c (say, defined again by hand): starting it
    # would run the VM twice.
    cloud.driver.create_domain(cloud.uri("c"), "vm1", uuid=cloud.vm, state="shutoff")
    with database_for(cloud.settings.database_url).session() as s:
        record_leftover(s, "duplicate-domain", cloud.vm, "seen by host sync", host="c")
    report = reconcile(cloud, apply=True)
    assert kinds(report) == ["shut-off-duplicate"]  # the sync's leftover is that finding's
    assert report.findings[0].disagreement == "a shut-off copy on c while the VM is running on a"
    assert report.findings[0].action == "none" and report.remaining == report.findings
    assert cloud.domains_on("c")[cloud.vm]["state"] == "shutoff" and cloud.instance().host == "a"


def test_an_incoming_copy_that_a_migration_job_feeds_is_not_destroyed(cloud):
    # Somebody's `virsh migrate` (not livemig's) runs from a to b.
    from tests.fakecloud import FILTER_XML

    cloud.driver.update_host(cloud.uri("b"), filters={"sg-web": FILTER_XML},
                             secrets={"vol-1": {"type": "iscsi", "value": "s3cret"}})
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "hang")
    cloud.driver._start_migration(cloud.uri("a"), cloud.uri("b"), cloud.vm)
    assert cloud.domains_on("b")[cloud.vm]["incoming_from"]
    report = reconcile(cloud, apply=True)
    (finding,) = [f for f in report.findings if f.action == "destroy-copy"]
    assert finding.outcome == "skipped: a migration job on a feeds the copy on b"
    assert cloud.domains_on("a")[cloud.vm]["job"] and cloud.vm in cloud.domains_on("b")
