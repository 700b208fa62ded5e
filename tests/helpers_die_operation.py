"""A real drain process that SIGKILLs itself at a chosen point of its operation.

Usage: python -m tests.helpers_die_operation DATA_DIR HOST POINT N [PARALLEL]
HOST `plan=FILE` runs the rebalance or consolidation plan document in FILE
(JSON, livemig.operations.fleet_plans' format) instead of a drain.
POINT:
  planning    the plan is computed and its moves written, not committed
  planned     the plan is committed; TaskFlow has not recorded the step's end
  submitting  inside the Nth submission's transaction (migration and move
              written, not committed)
  submitted   just after the Nth submission committed, before its flow runs
  waiting     once N moves are completed, with others in flight (their
              migration flows die with the process, mid-way)
A test then resumes the operation from another process."""
from __future__ import annotations

import sys

from livemig import api
from livemig.config import Settings
from livemig.context import admin_context
from livemig.operations import executor, tasks
from livemig.operations.api import drain_host
from tests.helpers_die import die


def install_kill_point(point: str, n: int) -> None:
    calls = {"n": 0}
    if point == "planning":
        original = tasks.record_moves

        def record_moves(*args, **kwargs):
            original(*args, **kwargs)
            die()

        tasks.record_moves = record_moves
    elif point == "planned":
        original_execute = tasks.PlanOperation.execute

        def execute(self, operation_id):
            original_execute(self, operation_id)
            die()

        tasks.PlanOperation.execute = execute
    elif point in ("submitting", "submitted"):
        original_record = api._record_migration

        def record_migration(*args, on_recorded=None, **kwargs):
            def marked(session, migration_id):
                on_recorded(session, migration_id)
                calls["n"] += 1
                if point == "submitting" and calls["n"] == n:
                    session.flush()
                    die()

            result = original_record(*args, on_recorded=marked, **kwargs)
            if point == "submitted" and calls["n"] == n:
                die()
            return result

        api._record_migration = record_migration
    elif point == "waiting":
        original_step = executor.MoveExecutor.step

        def step(self):
            tally = original_step(self)
            from livemig.operations.records import operation_moves

            with self.services.db.reading() as session:
                done = sum(1 for m in operation_moves(session, self.operation_id) if m.status == "completed")
            if done >= n and tally.in_flight:
                die()
            return tally

        executor.MoveExecutor.step = step
    else:
        raise SystemExit(f"unknown point {point}")


def main() -> None:
    data_dir, host, point, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    parallel = int(sys.argv[5]) if len(sys.argv) > 5 else None
    settings = Settings(data_dir=data_dir, poll_interval_s=0.02, queue_timeout_s=60.0)
    install_kill_point(point, n)
    if host.startswith("plan="):
        import json

        from livemig.operations.api import consolidate_fleet, rebalance_fleet

        with open(host[len("plan="):]) as file:
            plan = json.load(file)
        run = consolidate_fleet if plan["kind"] == "consolidate" else rebalance_fleet
        run(admin_context("tests"), plan=plan, settings=settings)
    else:
        drain_host(admin_context("tests"), host, parallel=parallel, settings=settings)
    sys.exit(3)  # never reached if the kill point was hit


if __name__ == "__main__":
    main()
