"""An operation, its moves and its event trail in the inventory. Every
change of an operation's status goes through `set_operation_status`, which
writes its event in the same transaction and never moves a final status."""
from __future__ import annotations

from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from livemig.input_bounds import is_operation_id
from livemig.operations.claims import OperationNotFound
from livemig.operations.states import MoveStatus, OperationStatus
from livemig.persistence.inventory import controller_id
from livemig.persistence.models import Migration, Operation, OperationEvent, OperationMove, utcnow


def get_operation(session: Session, operation_id: int) -> Operation:
    # An id the database cannot hold (SQLite raises OverflowError for it) is
    # simply not an operation.
    operation = session.get(Operation, operation_id) if is_operation_id(operation_id) else None
    if operation is None:
        raise OperationNotFound(f"operation {operation_id} does not exist")
    return operation


def add_operation_event(session: Session, operation_id: int, kind: str, message: str = "") -> None:
    session.add(OperationEvent(operation_id=operation_id, kind=kind, message=message, controller=controller_id(),
                               at=utcnow()))


def create_operation(session: Session, kind: str, requested_by: str, host: str | None,
                     arguments: dict[str, Any]) -> Operation:
    operation = Operation(kind=kind, status=OperationStatus.PLANNING.value, requested_by=requested_by, host=host,
                          arguments=arguments, plan={})
    session.add(operation)
    session.flush()
    add_operation_event(session, operation.id, "requested", f"{kind} {host or ''} requested by {requested_by}"
                        .replace("  ", " "))
    return operation


def set_operation_status(session: Session, operation_id: int, status: OperationStatus,
                         reason: str | None = None) -> bool:
    """Moves the operation to `status`, with an event; a final status stays
    (returns False, nothing written)."""
    operation = get_operation(session, operation_id)
    if OperationStatus(operation.status).finished:
        return False
    if operation.status == status.value and reason is None:
        return True
    operation.status = status.value
    if reason is not None:
        operation.reason = reason
    now = utcnow()
    if status is OperationStatus.RUNNING and operation.started_at is None:
        operation.started_at = now
    if status.finished:
        operation.finished_at = now
    add_operation_event(session, operation_id, status.value, reason or "")
    return True


def operation_moves(session: Session, operation_id: int) -> list[OperationMove]:
    return list(session.scalars(sa.select(OperationMove).where(OperationMove.operation_id == operation_id)
                                .order_by(OperationMove.position)))


def record_moves(session: Session, operation_id: int, moves: Iterable[dict[str, Any]]) -> list[OperationMove]:
    """The plan's moves: dicts with instance_uuid, instance_name, source_host,
    dest_host (None: stays), reason and (a planner's) wave; in plan order."""
    rows = []
    for position, move in enumerate(moves):
        status = MoveStatus.PLANNED if move["dest_host"] else MoveStatus.SKIPPED
        row = OperationMove(operation_id=operation_id, position=position, instance_uuid=move["instance_uuid"],
                            instance_name=move["instance_name"], source_host=move["source_host"],
                            dest_host=move["dest_host"], status=status.value, reason=move.get("reason"),
                            wave=move.get("wave"))
        session.add(row)
        rows.append(row)
    session.flush()
    return rows


def move_migrations(session: Session, operation_id: int, instance_uuid: str) -> list[Migration]:
    """Every migration the operation submitted for this instance, oldest first."""
    return list(session.scalars(sa.select(Migration).where(Migration.operation_id == operation_id,
                                                           Migration.instance_uuid == instance_uuid)
                                .order_by(Migration.id)))


def hosts_tried(migrations: Iterable[Migration]) -> set[str]:
    """The destinations a move's migrations tried (each one's, and every
    attempt a scheduled migration made before it)."""
    tried: set[str] = set()
    for migration in migrations:
        tried.add(migration.dest_host)
        for attempt in migration.attempts or []:
            host = attempt.get("host") or attempt.get("dest_host") if isinstance(attempt, dict) else attempt
            if isinstance(host, str):
                tried.add(host)
    return tried
