"""The steps of an operation's flow. Each looks at the database before it
acts, so that re-run after a crash (TaskFlow re-runs the step that was
RUNNING) it does nothing twice."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from taskflow import task
from taskflow.types.failure import Failure

from livemig.operations.claims import check_operation_claim
from livemig.operations.executor import TRANSIENT_PATIENCE_S, LocalMoveRunner, MoveExecutor, MoveRunner
from livemig.operations.planning import plan_drain, plan_return
from livemig.operations.records import (
    add_operation_event, get_operation, operation_moves, record_moves, set_operation_status,
)
from livemig.operations.standby import hosts_in_standby_by
from livemig.operations.states import MoveStatus, OperationKind, OperationStatus
from livemig.persistence.models import Instance
from livemig.services import Services
from livemig.states import InstanceState
from livemig.tasks.undo import with_backoff

OPERATION_ID = "operation_id"


class OperationTask(task.Task):
    """A task with livemig's services injected (never put in the store)."""

    def __init__(self, services: Services, name: str | None = None, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.services = services


class RecordOperationFailure(OperationTask):
    """Does nothing; its revert (the last to run) records why the operation failed.

    Reversion strategy: the operation ends `failed` with the failures' text
    (a final status already recorded stays); its host stays in maintenance.
    """

    def execute(self, operation_id: int) -> None:
        pass

    def revert(self, operation_id: int, flow_failures: dict[str, Failure], **kwargs: Any) -> None:
        reason = "; ".join(f"{atom}: {failure.exception_str}" for atom, failure in flow_failures.items())
        with self.services.db.session() as session:
            # A runner whose claim was superseded records nothing: the new owner runs it.
            check_operation_claim(session, operation_id)
            set_operation_status(session, operation_id, OperationStatus.FAILED, reason or "the flow was reverted")


class PlanOperation(OperationTask):
    """Plans the operation's moves once: the plan and its moves are recorded
    with the status `running` in one transaction; a plan found recorded is kept.

    Reversion strategy: nothing (RecordOperationFailure records the outcome).
    """

    def execute(self, operation_id: int) -> None:
        # A database blip must not end the operation (`failed` is final):
        # the plan is one transaction, kept once recorded.
        with_backoff(lambda: self._plan(operation_id), f"planning operation {operation_id}",
                     patience_s=TRANSIENT_PATIENCE_S)

    def _plan(self, operation_id: int) -> None:
        from livemig.scheduler.inventory import snapshot

        with self.services.db.session() as session:
            operation = get_operation(session, operation_id)
            if operation.status != OperationStatus.PLANNING.value or operation_moves(session, operation_id):
                return  # planned before a crash: the recorded plan is the plan
            check_operation_claim(session, operation_id)
            arguments = dict(operation.arguments or {})
            if OperationKind(operation.kind).planned:
                self._record_planners_moves(session, operation)
                return
            world = snapshot(session)
            if operation.kind == OperationKind.RETURN.value:
                placements = plan_return(world, operation.host, arguments.get("instances") or [])
            else:
                placements = plan_drain(world, operation.host, arguments.get("to") or None,
                                        arguments.get("weigher", "spread"))
            moves = [{"instance_uuid": p.instance_uuid, "instance_name": p.instance_name,
                      "source_host": p.source, "dest_host": p.dest, "reason": p.reason} for p in placements]
            record_moves(session, operation_id, moves)
            operation.plan = {"moves": [{"instance": m["instance_name"], "source": m["source_host"],
                                         "dest": m["dest_host"], "reason": m["reason"]} for m in moves],
                              "weigher": arguments.get("weigher", "spread"),
                              "candidates": arguments.get("to") or None}
            placed = sum(1 for m in moves if m["dest_host"])
            add_operation_event(session, operation_id, "planned",
                                f"{placed} of {len(moves)} instance(s) placed"
                                + (f"; {len(moves) - placed} stay" if placed < len(moves) else ""))
            set_operation_status(session, operation_id, OperationStatus.RUNNING)

    @staticmethod
    def _record_planners_moves(session, operation) -> None:
        """A rebalance's or consolidation's plan was made (and shown) when it
        was requested, and recorded with it: its moves, wave by wave."""
        plan = operation.plan or {}
        moves = [{"instance_uuid": m["instance_uuid"], "instance_name": m["instance"], "source_host": m["source"],
                  "dest_host": m["dest"], "wave": m["wave"],
                  "reason": "stop-over" if m.get("stop_over") else None} for m in plan.get("moves", [])]
        record_moves(session, operation.id, moves)
        waves = len({m["wave"] for m in moves})
        add_operation_event(session, operation.id, "planned",
                            f"{len(moves)} move(s) in {waves} wave(s) ({plan.get('method', 'no method')}"
                            f"{', proven optimal' if plan.get('optimal') else ''})")
        set_operation_status(session, operation.id, OperationStatus.RUNNING)


class RunMoves(OperationTask):
    """Submits the planned moves as migrations within the hosts' limits and
    `parallel`, follows them, re-plans failures, until none is left to run.

    Reversion strategy: nothing: migrations submitted are their own flows,
    each with its own revert.
    """

    def execute(self, operation_id: int) -> None:
        run_moves(self.services, operation_id)


def run_moves(services: Services, operation_id: int) -> None:
    runner: MoveRunner
    if services.settings.zookeeper_hosts:
        from livemig.operations.jobs import JobMoveRunner

        runner = JobMoveRunner(services)
    else:
        runner = LocalMoveRunner(services)
    try:
        MoveExecutor(services, operation_id, runner).run()
    finally:
        runner.close()


class EndOperation(OperationTask):
    """Records the outcome: `completed` when every move is done (a drain:
    its host is empty), `aborted` after an abort, else `partial`, naming each
    instance that stayed and why.

    Reversion strategy: nothing.
    """

    def execute(self, operation_id: int) -> None:
        # A database blip must not end the operation `failed` after its
        # moves ran: its reads and its one write are retried.
        finished, unfinished = with_backoff(lambda: self._look(operation_id), f"reading operation {operation_id}",
                                            patience_s=TRANSIENT_PATIENCE_S)
        if finished:
            return
        if unfinished:
            # Only after a runner's claim was superseded mid-step (its stale
            # step end is in the logbook): follow what is left first.
            run_moves(self.services, operation_id)
        with_backoff(lambda: self._record_outcome(operation_id), f"recording operation {operation_id}'s outcome",
                     patience_s=TRANSIENT_PATIENCE_S)

    def _look(self, operation_id: int) -> tuple[bool, bool]:
        """(the outcome is recorded, some move is not finished)."""
        with self.services.db.reading() as session:
            operation = get_operation(session, operation_id)
            if OperationStatus(operation.status).finished:
                return True, False
            return False, any(not MoveStatus(m.status).finished for m in operation_moves(session, operation_id))

    def _record_outcome(self, operation_id: int) -> None:
        with self.services.db.session() as session:
            operation = get_operation(session, operation_id)
            check_operation_claim(session, operation_id)
            moves = operation_moves(session, operation_id)
            stayed = _who_stayed(session, operation, moves)
            moved = sum(1 for m in moves if m.status == MoveStatus.COMPLETED.value)
            if operation.abort_requested:
                status, reason = OperationStatus.ABORTED, f"aborted: {moved} moved; " + "; ".join(stayed)
            elif stayed:
                status, reason = OperationStatus.PARTIAL, f"{moved} moved, {len(stayed)} stayed: " + "; ".join(stayed)
            else:
                status, reason = OperationStatus.COMPLETED, f"{moved} moved"
                if operation.kind == OperationKind.DRAIN.value:
                    reason += f"; {operation.host} is empty"
            if operation.kind == OperationKind.CONSOLIDATE.value:
                standby = hosts_in_standby_by(session, operation_id, (operation.plan or {}).get("emptied") or [])
                reason += f"; in standby: {', '.join(standby) or 'none'}"
            set_operation_status(session, operation_id, status, reason)


def _who_stayed(session, operation, moves) -> list[str]:
    """"name: why" for each instance the operation did not move where it
    should be. A drain's are those still on its host (an instance that left
    the host by other means is not among them); a return's, the moves that
    did not complete."""
    if operation.kind != OperationKind.DRAIN.value:
        return [f"{m.instance_name}: {m.status}: {m.reason or 'no reason recorded'}"
                for m in moves if m.status != MoveStatus.COMPLETED.value]
    by_uuid = {m.instance_uuid: m for m in moves}
    stayed = []
    for instance in session.scalars(sa.select(Instance).where(
            Instance.host == operation.host, Instance.state != InstanceState.DELETED.value).order_by(Instance.name)):
        move = by_uuid.get(instance.uuid)
        if move is None:
            stayed.append(f"{instance.name}: not in the plan (it came to {operation.host} after planning)")
        else:
            stayed.append(f"{instance.name}: {move.status}: {move.reason or 'no reason recorded'}")
    return stayed
