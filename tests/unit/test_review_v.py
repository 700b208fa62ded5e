"""Helper V's review of issue 14: each test reproduces one finding
(/work/prompts/V-findings.md) against the state of the world."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

import livemig
from livemig.drivers.base import InterfaceInfo
from livemig.persistence.models import Host, Migration
from tests.drainfleet import CTX, Fleet
from tests.unit.test_operations_resume import _drain_and_die, _state


def _maintenance(fleet: Fleet, name: str, reason: str = "disk swap") -> None:
    with fleet.db().session() as s:
        host = s.get(Host, name)
        host.maintenance, host.maintenance_reason = True, reason


def test_an_explicit_destination_in_maintenance_is_refused_and_nothing_changes(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=1, dests={"d1": {}})
    _maintenance(fleet, "d1")
    uuid = next(iter(fleet.instances))
    with pytest.raises(livemig.LivemigError, match="d1 is in maintenance"):
        livemig.migrate(CTX, uuid, "src", "d1", settings=settings)
    assert fleet.hosts_running()[uuid] == ["src"]
    assert fleet.migrations() == []


def _group_fleet(tmp_path, settings) -> Fleet:
    """src runs vm00 and vm01, both of group "web"; "bad" has the most room
    (spread plans vm00 there) but lost the guests' bridge, so the migration
    there fails with the VM intact; d1 can take both (it is where vm01 is
    planned, anti-affinity keeping it off bad)."""
    fleet = Fleet.build(tmp_path, settings, count=0, dests={"bad": {"memory_mb": 65536}, "d1": {}})
    for i in range(2):
        uuid = fleet.driver.create_domain(fleet.uri("src"), f"vm{i:02d}", memory_mb=1024, group="web", interfaces=[
            InterfaceInfo(mac=f"52:54:00:00:01:{i:02x}", bridge="br-guests")])
        fleet.instances[uuid] = f"vm{i:02d}"
    livemig.sync_hosts(CTX, settings=settings)
    fleet.driver.update_host(fleet.uri("bad"), bridges=[])
    return fleet


def test_a_replanned_move_keeps_anti_affinity_with_the_moves_still_planned(tmp_path, settings):
    fleet = _group_fleet(tmp_path, settings)
    plan = livemig.drain_host(CTX, "src", dry_run=True, settings=settings)
    assert [(m.instance_name, m.dest_host) for m in plan.moves] == [("vm00", "bad"), ("vm01", "d1")]
    view = livemig.drain_host(CTX, "src", parallel=1, settings=settings)
    fleet.assert_invariants()
    running = fleet.hosts_running()
    # Never two instances of one group on one host: vm00 has nowhere to go.
    assert sorted(hosts[0] for hosts in running.values()) == ["d1", "src"], running
    assert view.status == "partial", view.reason


def test_a_planned_destination_that_went_into_maintenance_gets_no_move(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=3, dests={"d1": {"memory_mb": 65536}, "d2": {}, "d3": {}})
    _drain_and_die(settings, "planned", 1)
    operation, moves, _ = _state(fleet)
    planned_on_d1 = {m.instance_uuid for m in moves if m.dest_host == "d1"}
    assert planned_on_d1
    _maintenance(fleet, "d1", "drained next")
    view = livemig.resume_operation(CTX, operation.id, settings=settings)
    assert view.status == "completed", view.reason
    fleet.assert_invariants()
    assert not [u for u, hosts in fleet.hosts_running().items() if "d1" in hosts]
    assert all("refused by d1: host d1 is in maintenance (drained next)" in m.reason
               for m in view.moves if m.instance_uuid in planned_on_d1)


def test_a_stale_runner_fenced_mid_flow_leaves_the_operation_resumable(tmp_path, settings):
    from livemig import api
    from livemig.operations.claims import OperationFenced, operation_claimed
    from livemig.operations.runner import claim_operation, load_operation_engine, run_operation_engine

    fleet = Fleet.build(tmp_path, settings, count=3)
    _drain_and_die(settings, "planned", 1)
    operation, _moves, _ = _state(fleet)
    services = api._services(settings)
    stale = operation.claim_epoch
    claim_operation(services, operation.id, "the new owner")  # which then stops before it writes anything
    with operation_claimed(operation.id, stale):
        # The frozen runner wakes: fenced at its first write, its engine
        # reverts and saves the flow's end in the logbook both runners share.
        engine = load_operation_engine(services, operation.id)
        with pytest.raises(OperationFenced):
            run_operation_engine(services, operation.id, engine)
    operation, moves, migrations = _state(fleet)
    assert operation.status == "running" and migrations == []  # the stale runner changed nothing
    view = livemig.resume_operation(CTX, operation.id, settings=settings)
    assert view.status == "completed", view.reason
    fleet.assert_invariants()
    assert sorted(fleet.completed_moves_per_instance()) == sorted(fleet.instances)


def test_a_database_blip_in_the_end_step_does_not_fail_the_operation(tmp_path, settings, monkeypatch):
    from livemig.errors import DatabaseUnavailable
    from livemig.operations import tasks

    fleet = Fleet.build(tmp_path, settings, count=2)
    original, blips = tasks._who_stayed, []

    def who_stayed(*args, **kwargs):
        if not blips:
            blips.append(1)
            raise DatabaseUnavailable("database sqlite:///... is unreachable: injected")
        return original(*args, **kwargs)

    monkeypatch.setattr(tasks, "_who_stayed", who_stayed)
    view = livemig.drain_host(CTX, "src", settings=settings)
    assert blips  # the end step met the blip
    assert view.status == "completed", view.reason
    fleet.assert_invariants()


def test_a_database_blip_while_planning_does_not_fail_the_operation(tmp_path, settings, monkeypatch):
    from livemig.errors import DatabaseUnavailable
    from livemig.operations import tasks

    fleet = Fleet.build(tmp_path, settings, count=2)
    original, blips = tasks.plan_drain, []

    def plan_drain(*args, **kwargs):
        if not blips:
            blips.append(1)
            raise DatabaseUnavailable("database sqlite:///... is unreachable: injected")
        return original(*args, **kwargs)

    monkeypatch.setattr(tasks, "plan_drain", plan_drain)
    view = livemig.drain_host(CTX, "src", settings=settings)
    assert blips
    assert view.status == "completed", view.reason
    fleet.assert_invariants()


def test_operation_list_refuses_an_unknown_kind(tmp_path, settings):
    import os
    import subprocess
    import sys

    Fleet.build(tmp_path, settings, count=1)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=root)
    env.pop("LIVEMIG_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "livemig.cli", "operation", "list", "--kind", "bogus"],
                          cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "livemig: error: unknown operation kind 'bogus' (drain, return, rebalance, consolidate)"
    assert livemig.list_operations(kind="drain", settings=settings) == []


def test_two_drains_of_one_host_started_together_record_one_operation(tmp_path, settings, monkeypatch):
    import threading

    from livemig.operations import api as operations
    from livemig.persistence.models import Operation

    fleet = Fleet.build(tmp_path, settings, count=2)
    original, barrier, seen = operations._refuse_second_operation, threading.Barrier(2), threading.local()

    def refuse_second_operation(session, host):
        original(session, host)
        if not getattr(seen, "first", False):
            seen.first = True
            try:
                # Both drains past their first check before either records.
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass

    monkeypatch.setattr(operations, "_refuse_second_operation", refuse_second_operation)
    outcomes: list[object] = []

    def drain() -> None:
        try:
            outcomes.append(livemig.drain_host(CTX, "src", settings=settings).status)
        except livemig.LivemigError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=drain) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with fleet.db().reading() as s:
        assert len(list(s.scalars(sa.select(Operation)))) == 1
    assert [o for o in outcomes if o == "completed"] == ["completed"], outcomes
    (refused,) = [o for o in outcomes if isinstance(o, livemig.LivemigError)]
    assert "is not finished" in str(refused)
    fleet.assert_invariants()


def _cli(settings, *args):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=root, COLUMNS="200",
               LIVEMIG_POLL_INTERVAL_S="0.02")
    env.pop("LIVEMIG_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "livemig.cli", *args], cwd=root, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)


def test_undrain_return_is_confirmed_like_the_drain_and_has_a_dry_run(tmp_path, settings):
    from livemig.persistence.models import Operation

    fleet = Fleet.build(tmp_path, settings, count=2, dests={"d1": {}, "d2": {}})
    assert livemig.drain_host(CTX, "src", settings=settings).status == "completed"

    def unchanged() -> None:
        with fleet.db().reading() as s:
            assert s.get(Host, "src").maintenance
            assert len(list(s.scalars(sa.select(Operation)))) == 1
        assert livemig.list_instances("src", settings=settings) == []

    refused = _cli(settings, "host", "undrain", "src", "--return")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == ("livemig: error: undrain --return moves 2 instance(s) back to src: pass --yes "
                                      "to confirm (not a terminal, cannot ask)")
    unchanged()
    plan = _cli(settings, "host", "undrain", "src", "--return", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "plan (dry run): return src" in plan.stdout and "2 of 2 instance(s) placed" in plan.stdout
    unchanged()
    done = _cli(settings, "host", "undrain", "src", "--return", "--yes")
    assert done.returncode == 0, done.stderr
    assert len(livemig.list_instances("src", settings=settings)) == 2
    assert sorted(fleet.hosts_running().values()) == [["src"], ["src"]]


def test_a_source_disabled_mid_drain_ends_its_moves_without_trying_every_host(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=2)
    _drain_and_die(settings, "planned", 1)
    operation, _moves, _ = _state(fleet)
    livemig.set_host_enabled(CTX, "src", False, "power fault", settings=settings)
    view = livemig.resume_operation(CTX, operation.id, settings=settings)
    assert view.status == "partial", view.reason
    assert fleet.migrations() == []
    assert all(m.status == "skipped" and "src is disabled (power fault)" in m.reason for m in view.moves), \
        [m.reason for m in view.moves]
    # The refusal is the source's: no other destination was tried for it.
    assert "move-replanned" not in [e.kind for e in view.events]
    fleet.assert_invariants()


def test_an_explicit_destination_with_an_instance_of_the_same_group_is_refused(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=0, dests={"d1": {}})
    mine = fleet.driver.create_domain(fleet.uri("src"), "web1", memory_mb=512, group="web")
    fleet.driver.create_domain(fleet.uri("d1"), "web2", memory_mb=512, group="web")
    livemig.sync_hosts(CTX, settings=settings)
    with pytest.raises(livemig.LivemigError, match="d1 already has web2 of group web"):
        livemig.migrate(CTX, mine, "src", "d1", settings=settings)
    assert fleet.hosts_running()[mine] == ["src"]
    assert fleet.migrations() == []


def test_a_refusal_about_the_source_is_not_retried_on_every_destination(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=2)
    _drain_and_die(settings, "planned", 1)
    operation, moves, _ = _state(fleet)
    gone = moves[0]
    # One VM vanished from src behind the inventory's back.
    fleet.driver.destroy_domain(fleet.uri("src"), gone.instance_uuid)
    view = livemig.resume_operation(CTX, operation.id, settings=settings)
    assert view.status == "partial", view.reason
    assert [m.instance_uuid for m in fleet.migrations()] == [moves[1].instance_uuid]
    by_name = {m.instance_name: m for m in view.moves}
    assert by_name[gone.instance_name].status == "failed"
    assert "is not running on src (hypervisor says" in by_name[gone.instance_name].reason
    # Its refusal is the same on every destination: no other destination was tried.
    assert "move-replanned" not in [e.kind for e in view.events]
