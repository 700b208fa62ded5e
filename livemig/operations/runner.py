"""Create an operation's logbook, and run or resume its flow in this process
(under a claim and a run lock), as livemig.runner does for migrations."""
from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import Iterator

import sqlalchemy as sa
from taskflow import engines, states as tf_states
from taskflow.engines.helpers import save_factory_details
from taskflow.persistence import models as tf_models
from taskflow.storage import Storage

from livemig.errors import Conflict, LivemigError
from livemig.operations.claims import (
    OperationFenced, check_operation_claim, operation_claimed, raise_operation_epoch,
)
from livemig.operations.flow import FACTORY_NAME, FLOW_NAME
from livemig.operations.records import add_operation_event, get_operation, set_operation_status
from livemig.operations.states import OperationStatus
from livemig.runner import process_lock
from livemig.services import Services, building_flows_with

LOG = logging.getLogger("livemig.operations")


def logbook_name(operation_id: int) -> str:
    return f"livemig-operation-{operation_id}"


def create_operation_logbook(services: Services, operation_id: int, connection: sa.Connection) -> tuple[str, str]:
    """Persist the operation's flow (factory and store) through `connection`,
    in the transaction that records the operation; returns (logbook, flow) uuids."""
    book_id, flow_id = str(uuid.uuid4()), str(uuid.uuid4())
    book = tf_models.LogBook(logbook_name(operation_id), uuid=book_id)
    flow_detail = tf_models.FlowDetail(FLOW_NAME, uuid=flow_id)
    book.add(flow_detail)
    save_factory_details(flow_detail, FACTORY_NAME, [], {})
    store = {"operation_id": operation_id}
    flow_detail.meta["store"] = store
    Storage(flow_detail).inject(store)
    services.db.taskflow_backend().get_connection().insert_logbook(connection, book)
    return book_id, flow_id


def claim_operation(services: Services, operation_id: int, by: str) -> int:
    with services.db.session() as session:
        epoch = raise_operation_epoch(session, operation_id)
        add_operation_event(session, operation_id, "claimed", f"by {by} (epoch {epoch})")
        return epoch


def load_operation_engine(services: Services, operation_id: int):
    with services.db.reading() as session:
        operation = get_operation(session, operation_id)
        book_id, flow_id = operation.logbook_id, operation.flow_id
    if not book_id:
        raise LivemigError(f"operation {operation_id} has no persisted flow")
    backend = services.db.taskflow_backend()
    with contextlib.closing(backend.get_connection()) as conn:
        flow_detail = conn.get_logbook(book_id).find(flow_id)
    with building_flows_with(services):
        engine = engines.load_from_detail(flow_detail, engine="serial", backend=backend)
    if engine.storage.get_flow_state() in _ENDED_FLOW_STATES:
        # The database says the operation is not finished (its claim was
        # granted), so this end was saved by a runner whose claim was
        # superseded: fenced at its next write, its engine reverted into the
        # logbook every runner shares. Run the flow again from its first
        # step: each step looks at the database before it acts (a recorded
        # plan is kept, submitted moves are followed, never submitted again).
        LOG.warning("operation %s: its flow was left %s by a superseded runner; running it again",
                    operation_id, engine.storage.get_flow_state())
        engine.storage.set_flow_state(tf_states.PENDING)
        engine.compile()
        engine.prepare()
        engine.reset()  # every step PENDING, to be executed
    return engine


# The flow states after which TaskFlow would not run the flow's steps again.
_ENDED_FLOW_STATES = (tf_states.SUCCESS, tf_states.REVERTED, tf_states.FAILURE)


@contextlib.contextmanager
def operation_run_lock(services: Services, operation_id: int) -> Iterator[None]:
    """One local process runs a given operation; the lock dies with it
    (what lets `operation resume` take over after a SIGKILL)."""
    with process_lock(services, f"operation-{operation_id}.lock", f"operation {operation_id}"):
        yield


def run_operation_engine(services: Services, operation_id: int, engine) -> None:
    """Run (or resume) the flow; its steps record the outcome. A flow that
    ended without one (its revert could not write) is recorded failed."""
    try:
        engine.run()
    except Exception as exc:  # noqa: BLE001 - the outcome goes in the operation row
        LOG.info("operation %s: flow ended with %s: %s", operation_id, type(exc).__name__, exc)
        if isinstance(exc, OperationFenced):
            raise  # another runner owns the operation now: its outcome is not ours to write
        with services.db.session() as session:
            if not OperationStatus(get_operation(session, operation_id).status).finished \
                    and engine.storage.get_flow_state() in (tf_states.FAILURE, tf_states.REVERTED):
                check_operation_claim(session, operation_id)
                set_operation_status(session, operation_id, OperationStatus.FAILED, f"{type(exc).__name__}: {exc}")
        raise


def run_operation(services: Services, operation_id: int, resumed: bool = False) -> None:
    """Claim the operation and run its flow here to its end."""
    from livemig.persistence.inventory import controller_id

    with operation_run_lock(services, operation_id):
        epoch = claim_operation(services, operation_id, f"pid {os.getpid()} on {controller_id()}")
        with operation_claimed(operation_id, epoch):
            engine = load_operation_engine(services, operation_id)
            flow_state = engine.storage.get_flow_state()
            if flow_state in (tf_states.SUCCESS, tf_states.REVERTED, tf_states.FAILURE):
                raise Conflict(f"operation {operation_id}'s flow already ended ({flow_state})")
            if resumed:
                with services.db.session() as session:
                    add_operation_event(session, operation_id, "resumed",
                                        f"from the persisted flow (it was {flow_state})")
            run_operation_engine(services, operation_id, engine)
