"""The real engine with a fault injected at every step, before or after the
step's side effect: the end state of the world must be consistent."""
from __future__ import annotations

import pytest

import livemig
from livemig.errors import MigrationFailed
from livemig.flows.live_migration import get_live_migration_flow
from livemig.services import building_flows_with, services_for
from tests.unit.test_flow_contract import EXPECTED_STEPS, _atoms

CTX = livemig.admin_context("tests")
with building_flows_with(services_for(livemig.Settings(data_dir="/tmp"))):
    STEP_CLASSES = {atom.name: type(atom) for atom in _atoms(get_live_migration_flow())}
# Steps that move the VM, or run after it moved.
MOVED_AFTER = EXPECTED_STEPS.index("migrate-domain")


class InjectedFault(RuntimeError):
    pass


def _inject(monkeypatch, step: str, when: str) -> None:
    cls = STEP_CLASSES[step]
    original = cls.execute

    def execute(self, *args, **kwargs):
        if self.name != step:
            return original(self, *args, **kwargs)
        if when == "before":
            raise InjectedFault(f"injected before {step}")
        original(self, *args, **kwargs)
        raise InjectedFault(f"injected after {step}")

    # Keep TaskFlow's argument inspection working on the wrapped method.
    execute.__signature__ = __import__("inspect").signature(original)
    monkeypatch.setattr(cls, "execute", execute)


# The retry controller is no task: it has no side effect to fail before or after.
CASES = [(step, when) for step in EXPECTED_STEPS[1:] if step != "retry-on-next-destination"
         for when in ("before", "after")]


@pytest.mark.parametrize("step,when", CASES, ids=[f"{s}-{w}" for s, w in CASES])
def test_fault_at_every_step_leaves_a_consistent_world(cloud, monkeypatch, step, when):
    _inject(monkeypatch, step, when)
    # A fault after the completion was recorded changes nothing: the VM moved,
    # the inventory says so, and an outcome is final.
    completed = (step, when) == ("mark-migration-completed", "after")
    if completed:
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    else:
        with pytest.raises(MigrationFailed):
            livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    migration = cloud.migration(cloud.last_migration().id)
    moved = EXPECTED_STEPS.index(step) > MOVED_AFTER or (step == "migrate-domain" and when == "after")
    where = "b" if moved else "a"
    # The VM runs on exactly one host, and the inventory says which.
    assert cloud.running_on() == [where]
    if completed:
        assert migration.status == "completed" and migration.error_reason is None
        notes = [e.message for e in livemig.show_migration(migration.id, settings=cloud.settings).events
                 if e.kind == "note" and e.name == "migration"]
        assert any("ignored a late change to failed" in n for n in notes), notes
    else:
        assert migration.status == "failed", migration.error_reason
        assert f"injected {when} {step}" in migration.error_reason
    assert cloud.instance().host == where and cloud.instance().state == "running"
    assert cloud.reservations() == []
    if not moved:
        # Nothing of this migration is left on the destination.
        assert cloud.host_record("b")["filters"] == {}
        assert cloud.host_record("b")["secrets"] == {}
        assert cloud.vm not in cloud.domains_on("b")
        assert "sg-web" in cloud.host_record("a")["filters"]
    # And the VM can be migrated afterwards.
    monkeypatch.undo()
    target = "c"
    livemig.migrate(CTX, "vm1", where, target, settings=cloud.settings)
    assert cloud.running_on() == [target]


def test_successful_migration_records_every_step(cloud):
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert view.status == "completed" and view.downtime_ms is not None
    trail = [(e.kind, e.name, e.state) for e in livemig.show_migration(view.id, settings=cloud.settings).events
             if e.kind in ("step", "flow")]
    # Each state change once, in order, between the flow's start and end.
    expected = [("step", name, state) for name in EXPECTED_STEPS for state in ("RUNNING", "SUCCESS")]
    assert trail[1:-1] == expected
    assert [(kind, state) for kind, _name, state in (trail[0], trail[-1])] == [("flow", "RUNNING"),
                                                                               ("flow", "SUCCESS")]
    assert cloud.running_on() == ["b"] and cloud.instance().host == "b"
    assert cloud.reservations() == []


def test_crash_during_migration_terminates_instance(cloud):
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "crash")
    with pytest.raises(MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert info.value.status == "error"
    assert cloud.running_on() == [] and cloud.vm not in cloud.domains_on("a")
    assert cloud.instance().state == "deleted"
    migration = cloud.migration(info.value.migration_id)
    assert "crashed" in migration.error_reason and "terminated" in migration.error_reason
    # Destination left clean too.
    assert cloud.host_record("b")["filters"] == {} and cloud.host_record("b")["secrets"] == {}


def test_crash_with_mark_error_policy_keeps_evidence(cloud):
    settings = cloud.settings.replace(unrecoverable_policy="mark-error")
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "crash")
    with pytest.raises(MigrationFailed):
        livemig.migrate(CTX, "vm1", "a", "b", settings=settings)
    assert cloud.domains_on("a")[cloud.vm]["state"] == "crashed"
    assert cloud.instance().state == "error"


def test_destination_dies_mid_migration(cloud):
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "dest-died")
    with pytest.raises(MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert info.value.status == "failed"
    assert cloud.running_on() == ["a"]
    assert cloud.domains_on("b") == {}  # the orphaned incoming domain was destroyed
    assert cloud.host_record("b")["filters"] == {}


def test_abort_a_running_migration(cloud):
    import threading
    import time
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "hang")

    def abort_when_running():
        for _ in range(200):
            m = cloud.last_migration()
            if m is not None and m.status == "running":
                livemig.abort(CTX, m.id, settings=cloud.settings)
                return
            time.sleep(0.02)

    t = threading.Thread(target=abort_when_running)
    t.start()
    with pytest.raises(MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    t.join()
    assert info.value.status == "cancelled"
    assert cloud.running_on() == ["a"] and cloud.instance().state == "running"
    assert cloud.host_record("b")["filters"] == {}


def test_failed_step_is_in_the_trail_with_its_error(cloud, monkeypatch):
    _inject(monkeypatch, "set-up-network-on-destination", "before")
    with pytest.raises(MigrationFailed):
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    events = livemig.show_migration(cloud.last_migration().id, settings=cloud.settings).events
    trail = [(e.name, e.state) for e in events if e.kind == "step"]
    failed = [e for e in events if e.kind == "step" and e.state == "FAILURE"]
    assert [e.name for e in failed] == ["set-up-network-on-destination"]
    assert "injected before set-up-network-on-destination" in failed[0].message
    # The steps that ran are reverted, newest first, each once.
    done = EXPECTED_STEPS[:EXPECTED_STEPS.index("set-up-network-on-destination")]
    reverted = [name for name, state in trail if state == "REVERTED" and name in done]
    assert reverted == list(reversed(done))
    assert [e.state for e in events if e.kind == "flow"] == ["RUNNING", "REVERTED"]


def test_a_failed_migration_never_runs_again(cloud):
    """TaskFlow resets a REVERTED flow to PENDING when it is loaded again: run
    again (a re-posted job, a second run or resume), a migration recorded
    failed used to end completed, with a second hypervisor migration."""
    from livemig.errors import MigrationEnded
    from livemig.runner import resume_migration, run_migration
    from livemig.services import services_for

    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "dest-died")
    with pytest.raises(MigrationFailed) as info:
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    migration_id = info.value.migration_id
    assert cloud.migration(migration_id).status == "failed"
    steps_before = len([e for e in livemig.show_migration(migration_id, settings=cloud.settings).events
                        if e.kind == "step"])
    services = services_for(cloud.settings)
    for again in (run_migration, resume_migration):
        with pytest.raises(MigrationEnded, match=rf"migration {migration_id} already ended \(failed\)"):
            again(services, migration_id)
    with pytest.raises(MigrationEnded, match="already ended"):
        livemig.resume(CTX, migration_id, settings=cloud.settings)
    # No step ran: the outcome, the world and the trail are as the failure left them.
    assert cloud.migration(migration_id).status == "failed"
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1
    assert cloud.running_on() == ["a"] and cloud.instance().host == "a"
    assert len([e for e in livemig.show_migration(migration_id, settings=cloud.settings).events
                if e.kind == "step"]) == steps_before


@pytest.mark.parametrize("first,then", [("completed", "failed"), ("failed", "completed"), ("cancelled", "error"),
                                        ("failed", "running")])
def test_a_recorded_outcome_is_never_changed(cloud, first, then):
    from livemig.services import services_for
    from livemig.states import MigrationStatus

    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=cloud.settings)
    db = services_for(cloud.settings).db
    db.set_migration_status(view.id, MigrationStatus(first), "first")
    db.set_migration_status(view.id, MigrationStatus(then), "late")
    migration = cloud.migration(view.id)
    assert (migration.status, migration.error_reason) == (first, "first")
