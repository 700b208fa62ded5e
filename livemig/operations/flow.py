"""An operation's flow (drain, return): persisted in the same database as
the migrations' flows, run in this process or by a conductor."""
from __future__ import annotations

from taskflow.patterns import linear_flow

from livemig.operations.tasks import EndOperation, PlanOperation, RecordOperationFailure, RunMoves
from livemig.services import flow_services

FLOW_NAME = "livemig-operation-flow"
REQUIRED_STORE_KEYS = frozenset({"operation_id"})


def get_operation_flow() -> linear_flow.Flow:
    """Builds the flow that runs one fleet operation.

    1. record-operation-failure: nothing; its revert, the last to run,
       records the operation `failed` with the reason.
    2. plan-operation: the plan and its moves, recorded once.
    3. run-moves: submit the moves as migrations within the limits, follow
       them, re-plan failed ones, until none is left to run.
    4. end-operation: completed, partial (who stayed and why) or aborted.

    Its services are those of the process that builds it (as a migration's).
    """
    services = flow_services({})
    return linear_flow.Flow(FLOW_NAME).add(
        RecordOperationFailure(services, name="record-operation-failure"),
        PlanOperation(services, name="plan-operation"),
        RunMoves(services, name="run-moves"),
        EndOperation(services, name="end-operation"),
    )


FACTORY_NAME = f"{__name__}.get_operation_flow"
