"""`host drain` as a fleet operation on the fake driver: the state of the
world after it (each VM on exactly one host, the drained host empty, each
instance moved once), host limits judged from the migrations' event
timeline, retries on another host, partial drains, abort, dry run, undrain
--return, and the command line's refusals."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import sqlalchemy as sa

import livemig
from livemig.persistence.models import Host, Migration, Operation, OperationEvent, OperationMove
from tests.drainfleet import CTX, Fleet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _operation_events(fleet: Fleet, operation_id: int) -> list[str]:
    with fleet.db().reading() as s:
        return [e.kind for e in s.scalars(sa.select(OperationEvent).where(OperationEvent.operation_id == operation_id)
                                          .order_by(OperationEvent.id))]


def _host(fleet: Fleet, name: str) -> Host:
    with fleet.db().reading() as s:
        return s.get(Host, name)


def test_drain_20_instances_over_5_hosts(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=20, limits={"d1": 1, "d2": 2, "d3": 2, "d4": 3, "d5": 1})
    view = livemig.drain_host(CTX, "src", reason="firmware", settings=settings)
    assert view.status == "completed", view.reason
    assert view.counts == {"completed": 20}
    running = fleet.hosts_running()
    assert not [u for u, hosts in running.items() if "src" in hosts]
    assert livemig.list_instances("src", settings=settings) == []
    fleet.assert_invariants()
    # Each instance moved by exactly one migration, all of this operation.
    assert all(m.operation_id == view.id for m in fleet.migrations())
    assert sorted(fleet.completed_moves_per_instance()) == sorted(fleet.instances)
    # The source's limit (3) bounded the drain: it was reached, never passed.
    concurrency = fleet.max_concurrency()
    assert concurrency["src"] == (3, 3)
    host = _host(fleet, "src")
    assert host.maintenance and host.maintenance_reason == "firmware"
    kinds = _operation_events(fleet, view.id)
    assert kinds[:4] == ["requested", "maintenance", "claimed", "planned"]
    assert kinds.count("move-submitted") == 20 and kinds.count("move-completed") == 20
    assert kinds[-1] == "completed"


def test_the_largest_instances_are_planned_first_and_spread(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=4, sizes=[512, 4096, 1024, 2048],
                        dests={"d1": {}, "d2": {}})
    view = livemig.drain_host(CTX, "src", dry_run=True, settings=settings)
    assert [m.instance_name for m in view.moves] == ["vm01", "vm03", "vm02", "vm00"]
    # Spread: the 4 GiB one takes d1, then the next goes to the emptier d2, ...
    assert [m.dest_host for m in view.moves] == ["d1", "d2", "d2", "d2"]
    assert fleet.inventory_hosts() and all(h == "src" for h in fleet.inventory_hosts().values())


def test_a_destination_that_fails_is_replaced_by_another(tmp_path, settings):
    # d1 has the most room (spread prefers it) but its hypervisor lost the
    # guests' bridge: every migration there fails while the VM is intact.
    fleet = Fleet.build(tmp_path, settings, count=6, dests={"d1": {"memory_mb": 65536}, "d2": {}, "d3": {}})
    fleet.driver.update_host(fleet.uri("d1"), bridges=[])
    view = livemig.drain_host(CTX, "src", settings=settings)
    assert view.status == "completed", view.reason
    fleet.assert_invariants()
    on_d1 = [m for m in fleet.migrations() if m.dest_host == "d1"]
    assert on_d1 and all(m.status == "failed" for m in on_d1)
    assert not [u for u, hosts in fleet.hosts_running().items() if "d1" in hosts]
    retried = {m.instance_uuid for m in on_d1}
    shown = livemig.show_operation(view.id, settings=settings)
    assert [m["dest"] for m in shown.plan["moves"]] == [m.planned_dest for m in shown.moves]
    for move in shown.moves:
        if move.instance_uuid in retried:
            assert move.planned_dest == "d1" or "refused" in move.reason
            assert move.dest_host in ("d2", "d3") and "retry after d1" in move.reason
    assert "move-replanned" in _operation_events(fleet, view.id)


def test_a_move_with_no_host_left_fails_with_every_reason(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=1, dests={"d1": {}})
    fleet.driver.update_host(fleet.uri("d1"), bridges=[])
    view = livemig.drain_host(CTX, "src", settings=settings)
    assert view.status == "partial"
    (move,) = view.moves
    assert move.status == "failed"
    assert move.reason.startswith("failed on d1 (migration 1:") and "no host can take it" in move.reason
    assert "vm00: failed" in view.reason
    fleet.assert_invariants()
    assert fleet.inventory_hosts()[move.instance_uuid] == "src"


def test_not_enough_room_is_a_partial_drain_that_says_who_stayed_and_why(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=4, memory_mb=1024, dests={"d1": {"memory_mb": 2048}})
    view = livemig.drain_host(CTX, "src", settings=settings)
    assert view.status == "partial"
    assert view.counts == {"completed": 2, "skipped": 2}
    stayed = [m for m in view.moves if m.status == "skipped"]
    for move in stayed:
        assert move.reason == "no host can take it: d1: memory: needs 1024 MB, 0 free"
        assert f"{move.instance_name}: skipped: no host can take it" in view.reason
    assert view.reason.startswith("2 moved, 2 stayed: ")
    assert len(livemig.list_instances("src", settings=settings)) == 2
    assert _host(fleet, "src").maintenance  # stays in maintenance
    fleet.assert_invariants()


def test_abort_cancels_the_moves_not_started_and_lets_the_running_one_finish(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=5, migration_seconds=0.6)
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault(
        "view", livemig.drain_host(CTX, "src", parallel=1, settings=settings)))
    runner.start()
    operation_id = _wait_for_submitted(fleet, 1)
    livemig.abort_operation(CTX, operation_id, settings=settings)
    runner.join(60)
    view = result["view"]
    assert view.status == "aborted"
    assert view.counts == {"completed": 1, "cancelled": 4}
    assert len(fleet.migrations()) == 1
    assert len(livemig.list_instances("src", settings=settings)) == 4
    fleet.assert_invariants()


def test_abort_now_aborts_the_moves_in_flight_too(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=3, migration_seconds=30)
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault(
        "view", livemig.drain_host(CTX, "src", parallel=1, settings=settings)))
    runner.start()
    operation_id = _wait_for_running(fleet)
    livemig.abort_operation(CTX, operation_id, now=True, settings=settings)
    runner.join(60)
    view = result["view"]
    assert view.status == "aborted"
    assert view.counts == {"cancelled": 3}
    (migration,) = fleet.migrations()
    assert migration.status == "cancelled"
    assert len(livemig.list_instances("src", settings=settings)) == 3
    fleet.assert_invariants()


def _wait_for_submitted(fleet: Fleet, count: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with fleet.db().reading() as s:
            submitted = s.scalar(sa.select(sa.func.count()).select_from(OperationMove)
                                 .where(OperationMove.migration_id.is_not(None)))
            operation_id = s.scalar(sa.select(Operation.id))
        if submitted >= count:
            return operation_id
        time.sleep(0.02)
    raise AssertionError("no move was submitted")


def _wait_for_running(fleet: Fleet) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with fleet.db().reading() as s:
            running = s.scalar(sa.select(Migration.id).where(Migration.status == "running"))
            operation_id = s.scalar(sa.select(Operation.id))
        if running is not None:
            return operation_id
        time.sleep(0.02)
    raise AssertionError("no migration started running")


def test_dry_run_changes_nothing(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=3)
    before = fleet.inventory_hosts()
    view = livemig.drain_host(CTX, "src", dry_run=True, settings=settings)
    assert view.id is None and view.status == "dry-run"
    assert [m.status for m in view.moves] == ["planned"] * 3
    with fleet.db().reading() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Operation)) == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(Migration)) == 0
    assert not _host(fleet, "src").maintenance
    assert fleet.inventory_hosts() == before


def test_undrain_return_moves_the_drained_instances_back(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=4)
    drain = livemig.drain_host(CTX, "src", settings=settings)
    assert drain.status == "completed"
    back = livemig.undrain_host(CTX, "src", return_instances=True, settings=settings)
    assert not back.host.maintenance
    assert back.operation.kind == "return" and back.operation.status == "completed"
    assert sorted(m.instance_uuid for m in back.operation.moves) == sorted(fleet.instances)
    assert all(h == "src" for h in fleet.inventory_hosts().values())
    assert all(hosts == ["src"] for hosts in fleet.hosts_running().values())


def test_a_second_drain_of_a_host_is_refused_while_the_first_runs(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=3, migration_seconds=0.5)
    runner = threading.Thread(target=lambda: livemig.drain_host(CTX, "src", parallel=1, settings=settings))
    runner.start()
    operation_id = _wait_for_submitted(fleet, 1)
    try:
        livemig.drain_host(CTX, "src", settings=settings)
    except livemig.LivemigError as exc:
        assert f"operation {operation_id} on host src is not finished" in str(exc)
    else:
        raise AssertionError("a second drain was accepted")
    runner.join(60)


# -- the command line --------------------------------------------------------------------------------

def _cli(settings, *args, stdin=None):
    env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=ROOT, COLUMNS="200",
               LIVEMIG_POLL_INTERVAL_S="0.02")
    env.pop("LIVEMIG_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "livemig.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, input=stdin)


def _world(fleet: Fleet):
    with fleet.db().reading() as s:
        return (fleet.inventory_hosts(), s.scalar(sa.select(sa.func.count()).select_from(Operation)),
                s.scalar(sa.select(sa.func.count()).select_from(Migration)),
                [(h.name, h.maintenance) for h in s.scalars(sa.select(Host).order_by(Host.name))])


def test_cli_bad_input_is_one_line_and_changes_nothing(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=2, dests={"d1": {}})
    before = _world(fleet)
    cases = [
        (["host", "drain", "nosuch", "--yes"], "livemig: error: host 'nosuch' is not in the inventory"),
        (["host", "drain", "src", "--parallel", "0", "--yes"], "livemig: error: --parallel must be at least 1"),
        (["host", "drain", "src", "--to", "src", "--yes"],
         "livemig: error: --to src: the host being drained cannot be a destination"),
        (["host", "drain", "src", "--to", "nosuch", "--yes"], "livemig: error: host 'nosuch' is not in the inventory"),
        (["host", "drain", "src"], "livemig: error: draining src moves 2 instance(s): pass --yes to confirm"),
        (["host", "undrain", "src"], "livemig: error: host src is not in maintenance"),
        (["host", "drain", "src", "--yes", "--no-wait"], "livemig: error: --no-wait needs ZooKeeper"),
        (["operation", "show", "7"], "livemig: error: operation 7 does not exist"),
        (["operation", "abort", "7"], "livemig: error: operation 7 does not exist"),
        (["operation", "resume", "7"], "livemig: error: operation 7 does not exist"),
    ]
    for args, message in cases:
        proc = _cli(settings, *args, stdin="")
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), (args, proc.stderr)
        assert _world(fleet) == before, args


def test_cli_drain_dry_run_drain_and_show(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=3, dests={"d1": {}, "d2": {}})
    dry = _cli(settings, "host", "drain", "src", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "plan (dry run): drain src" in dry.stdout and "3 of 3 instance(s) placed" in dry.stdout
    assert _world(fleet)[1] == 0
    run = _cli(settings, "host", "drain", "src", "--yes", "--reason", "kernel 6.9")
    assert run.returncode == 0, run.stderr
    assert "operation 1: drain src completed: 3 moved; src is empty" in run.stdout
    listed = _cli(settings, "host", "list")
    assert "yes: kernel 6.9" in listed.stdout
    show = _cli(settings, "operation", "show", "1", "--format", "json")
    import json

    data = json.loads(show.stdout)
    assert data["status"] == "completed" and [m["status"] for m in data["moves"]] == ["completed"] * 3
    assert [e["kind"] for e in data["events"]][-1] == "completed"
    again = _cli(settings, "operation", "resume", "1")
    assert again.returncode != 0 and "operation 1 already ended (completed)" in again.stderr


def test_to_limits_the_destinations(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=6)
    view = livemig.drain_host(CTX, "src", to=["d2", "d4"], settings=settings)
    assert view.status == "completed", view.reason
    assert {m.dest_host for m in view.moves} == {"d2", "d4"}
    assert {m.dest_host for m in fleet.migrations()} == {"d2", "d4"}
    fleet.assert_invariants()


def test_a_host_in_maintenance_takes_no_new_placement(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=2, sources={"src": 2, "other": 2}, dests={"d1": {}})
    # d1 is preferred by spread (empty); in maintenance it is refused with the reason.
    with fleet.db().session() as s:
        host = s.get(Host, "d1")
        host.maintenance, host.maintenance_reason = True, "disk swap"
    view = livemig.drain_host(CTX, "src", dry_run=True, settings=settings)
    assert {m.dest_host for m in view.moves} == {"other"}
    view = livemig.drain_host(CTX, "src", to=["d1"], dry_run=True, settings=settings)
    assert all(m.dest_host is None and "d1: maintenance" in m.reason for m in view.moves)


def test_the_operation_flow_is_a_contract(tmp_path):
    from oslo_utils import reflection

    from livemig.operations import flow as operation_flow
    from livemig.services import building_flows_with, services_for
    from livemig.config import Settings

    with building_flows_with(services_for(Settings(data_dir=str(tmp_path)))):
        built = operation_flow.get_operation_flow()
    names = [atom.name for atom in built]
    assert names == ["record-operation-failure", "plan-operation", "run-moves", "end-operation"]
    assert len(set(names)) == len(names)
    assert set(built.requires) == operation_flow.REQUIRED_STORE_KEYS
    factory = reflection.get_callable_name(operation_flow.get_operation_flow)
    assert factory == operation_flow.FACTORY_NAME


def test_the_timeline_check_sees_an_overlap(tmp_path, settings):
    """The limit check used above can fail: two migrations whose holdings
    of a limit-1 host overlap in their event timeline are reported."""
    import datetime as dt

    from livemig.persistence.models import Event

    fleet = Fleet.build(tmp_path, settings, count=2, dests={"d1": {}}, limits={"d1": 1})
    t0 = dt.datetime(2026, 1, 1)
    with fleet.db().session() as s:
        for mid, (start, end) in {1: (0, 10), 2: (5, 15)}.items():
            s.add(Migration(id=mid, instance_uuid=f"u{mid}", instance_name=f"vm{mid}", source_host="src",
                            dest_host="d1", status="completed"))
            s.add(Event(migration_id=mid, kind="step", name="reserve-hosts", state="SUCCESS",
                        at=t0 + dt.timedelta(seconds=start)))
            s.add(Event(migration_id=mid, kind="step", name="release-hosts", state="RUNNING",
                        at=t0 + dt.timedelta(seconds=end)))
    assert fleet.max_concurrency()["d1"] == (2, 1)


def test_a_destination_that_does_not_answer_at_submission_is_replaced(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=3, dests={"d1": {"memory_mb": 65536}, "d2": {}})
    fleet.driver.update_host(fleet.uri("d1"), reachable=False)
    view = livemig.drain_host(CTX, "src", settings=settings)
    assert view.status == "completed", view.reason
    assert {m.dest_host for m in fleet.migrations()} == {"d2"}  # nothing was recorded towards d1
    assert any(m.reason and m.reason.startswith("refused by d1: ") for m in view.moves)
    fleet.assert_invariants()


def test_following_a_run_returns_the_outcome_recorded_as_the_runner_ended(tmp_path, settings, monkeypatch):
    """The runner may record the outcome and end while the follower reads
    the view: the follower must not return that older view."""
    from livemig import api
    from livemig.operations import api as operations
    from livemig.operations.records import create_operation, set_operation_status
    from livemig.operations.states import OperationStatus

    Fleet.build(tmp_path, settings, count=1)
    services = api._services(settings)
    with services.db.session() as s:
        operation_id = create_operation(s, "drain", "tests", "src", {}).id
    reading, runner_done = threading.Event(), threading.Event()
    original = operations.show_operation

    def slow_show(op_id, settings=None):
        view = original(op_id, settings=settings)
        if not reading.is_set():
            reading.set()
            runner_done.wait(10)  # the runner records its outcome and ends meanwhile
            time.sleep(0.1)
        return view

    def runner():
        reading.wait(10)
        with services.db.session() as s:
            set_operation_status(s, operation_id, OperationStatus.COMPLETED, "done")
        runner_done.set()

    monkeypatch.setattr(operations, "show_operation", slow_show)
    view = operations._follow(services, operation_id, None, runner=runner)
    assert view.status == "completed"
