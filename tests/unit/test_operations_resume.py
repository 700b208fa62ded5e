"""kill -9 of the process running a drain, in planning, submitting and
waiting, then `operation resume`: no move submitted twice, no VM moved
again, the moves in flight followed, limits held, the host emptied."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa

import livemig
from livemig.persistence.models import Migration, Operation, OperationMove
from tests.drainfleet import CTX, Fleet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(settings):
    env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=ROOT, LIVEMIG_POLL_INTERVAL_S="0.02",
               COLUMNS="200")
    env.pop("LIVEMIG_DATABASE_URL", None)
    return env


def _drain_and_die(settings, point, n, parallel=None):
    args = [sys.executable, "-m", "tests.helpers_die_operation", settings.data_dir, "src", point, str(n)]
    if parallel:
        args.append(str(parallel))
    proc = subprocess.run(args, cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _state(fleet):
    with fleet.db().reading() as s:
        operation = s.scalars(sa.select(Operation)).one()
        moves = list(s.scalars(sa.select(OperationMove)))
        migrations = list(s.scalars(sa.select(Migration)))
    return operation, moves, migrations


CASES = [("planning", 1), ("planned", 1), ("submitting", 1), ("submitting", 5), ("submitted", 4), ("waiting", 6)]


@pytest.mark.parametrize("point,n", CASES, ids=[f"{p}-{n}" for p, n in CASES])
def test_sigkill_then_resume_moves_each_instance_exactly_once(tmp_path, settings, point, n):
    fleet = Fleet.build(tmp_path, settings, count=20, migration_seconds=0.3)
    _drain_and_die(settings, point, n)
    operation, moves, migrations = _state(fleet)
    assert operation.status in ("planning", "running")
    if point == "planning":
        assert moves == [] and migrations == []  # the plan's transaction died with the process
    if point == "submitting":
        assert len(migrations) == n - 1  # the Nth submission's transaction died with it
    if point == "submitted":
        assert len(migrations) == n and sum(m.migration_id is not None for m in moves) == n
    in_flight_at_kill = {m.id for m in migrations if m.status not in ("completed", "failed", "cancelled", "error")}
    if point in ("submitted", "waiting"):
        assert in_flight_at_kill  # the runner died with moves in flight
    view = livemig.resume_operation(CTX, operation.id, settings=settings)
    assert view.status == "completed", view.reason
    fleet.assert_invariants()
    operation, moves, migrations = _state(fleet)
    # One migration per instance: nothing was submitted twice.
    assert collections.Counter(m.instance_uuid for m in migrations) == collections.Counter(list(fleet.instances))
    assert all(m.status == "completed" for m in migrations)
    # The migrations that were in flight when the runner died were followed to their end.
    for migration_id in in_flight_at_kill:
        notes = [e.name for e in livemig.show_migration(migration_id, settings=settings).events if e.kind == "note"]
        assert "resume" in notes, (migration_id, notes)
    assert not [u for u, hosts in fleet.hosts_running().items() if "src" in hosts]


def test_sigkill_while_waiting_then_resume_from_the_command_line(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=6, migration_seconds=0.5)
    _drain_and_die(settings, "waiting", 2, parallel=2)
    operation, _moves, _migrations = _state(fleet)
    busy = _cli_resume(settings, operation.id)
    assert busy.returncode == 0, busy.stderr
    assert f"operation {operation.id}: drain src completed: 6 moved; src is empty" in busy.stdout
    fleet.assert_invariants()
    events = [e.kind for e in livemig.show_operation(operation.id, settings=settings).events]
    assert events.count("claimed") == 2 and "resumed" in events


def _cli_resume(settings, operation_id):
    return subprocess.run([sys.executable, "-m", "livemig.cli", "operation", "resume", str(operation_id)],
                          cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=120)


def test_resume_of_a_finished_operation_is_refused(tmp_path, settings):
    Fleet.build(tmp_path, settings, count=1)
    view = livemig.drain_host(CTX, "src", settings=settings)
    with pytest.raises(livemig.LivemigError, match="already ended"):
        livemig.resume_operation(CTX, view.id, settings=settings)


def test_a_migration_recorded_but_not_marked_is_found_again_not_submitted_twice(tmp_path, settings):
    from livemig import api

    fleet = Fleet.build(tmp_path, settings, count=4)
    _drain_and_die(settings, "planned", 1)
    operation, moves, _ = _state(fleet)
    # As if a runner died between recording a move's migration and marking the move.
    move = moves[0]
    lost, _ids, _hosts = api._record_migration(CTX, api._services(settings), move.instance_uuid, move.source_host,
                                       move.dest_host, {}, operation_id=operation.id)
    view = livemig.resume_operation(CTX, operation.id, settings=settings)
    assert view.status == "completed", view.reason
    assert view.moves[0].migration_id == lost
    assert "move-adopted" in [e.kind for e in view.events]
    _op, _moves, migrations = _state(fleet)
    assert collections.Counter(m.instance_uuid for m in migrations) == collections.Counter(list(fleet.instances))
    fleet.assert_invariants()


def test_an_instance_moved_meanwhile_by_someone_else_is_not_moved_again(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=3, dests={"d1": {}, "d2": {}})
    _drain_and_die(settings, "planned", 1)
    operation, moves, _ = _state(fleet)
    moved = moves[1]
    single = livemig.migrate(CTX, moved.instance_uuid, "src", "d2", settings=settings)
    view = livemig.resume_operation(CTX, operation.id, settings=settings)
    assert view.status == "completed", view.reason
    skipped = view.moves[1]
    assert skipped.status == "skipped" and skipped.reason.startswith("already on d2, not on src")
    _op, _moves, migrations = _state(fleet)
    assert [m.id for m in migrations if m.instance_uuid == moved.instance_uuid] == [single.id]
    fleet.assert_invariants()


def test_a_runner_whose_claim_was_superseded_submits_nothing(tmp_path, settings):
    from livemig import api
    from livemig.operations.claims import OperationFenced, operation_claimed
    from livemig.operations.executor import LocalMoveRunner, MoveExecutor
    from livemig.operations.runner import claim_operation

    fleet = Fleet.build(tmp_path, settings, count=2)
    _drain_and_die(settings, "planned", 1)
    operation, _moves, _ = _state(fleet)
    services = api._services(settings)
    with operation_claimed(operation.id, operation.claim_epoch):  # the dead runner's claim
        claim_operation(services, operation.id, "another runner")  # ... is superseded
        with pytest.raises(OperationFenced, match="superseded"):
            MoveExecutor(services, operation.id, LocalMoveRunner(services)).step()
    _op, moves, migrations = _state(fleet)
    assert migrations == [] and all(m.status == "planned" for m in moves)


def test_a_replan_counts_the_room_the_rest_of_the_plan_holds(tmp_path, settings):
    from livemig import api
    from livemig.operations.executor import LocalMoveRunner, MoveExecutor

    fleet = Fleet.build(tmp_path, settings, count=3, memory_mb=1024, dests={"d1": {}, "d2": {}})
    _drain_and_die(settings, "planned", 1)
    operation, moves, _ = _state(fleet)
    services = api._services(settings)
    executor = MoveExecutor(services, operation.id, LocalMoveRunner(services))
    planned_on = collections.Counter(m.dest_host for m in moves[1:])
    with services.db.reading() as session:
        world = executor._world(session, moves[0].id)
    # The move being re-planned is left out; every other planned move holds its room.
    for host in ("d1", "d2"):
        assert world.hosts[host].memory_mb_used == 1024 * planned_on[host]


def test_abort_of_an_operation_whose_runner_died_ends_it_on_resume(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, count=3)
    _drain_and_die(settings, "submitted", 1)
    operation, _moves, _ = _state(fleet)
    livemig.abort_operation(CTX, operation.id, settings=settings)
    view = livemig.resume_operation(CTX, operation.id, settings=settings)
    assert view.status == "aborted"
    # The move in flight finished; the others were never submitted.
    assert view.counts == {"completed": 1, "cancelled": 2}
    assert len(fleet.migrations()) == 1
    fleet.assert_invariants()
