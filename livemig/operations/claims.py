"""Fencing for operations, as livemig.fencing does for migrations: every
claim of an operation (an in-process run, `operation resume`, a conductor)
raises its `claim_epoch`; the thread that runs the operation's flow remembers
its epoch, and every write the executor makes first checks, in the same
transaction, that the epoch is still current. A runner that was frozen while
another took over submits nothing when it wakes."""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from livemig.errors import Conflict, LivemigError, NotFound
from livemig.operations.states import FINISHED_OPERATION_STATUSES
from livemig.persistence.models import Operation


class OperationFenced(LivemigError):
    """This runner's claim on the operation is stale: another claimed it since."""

    exit_code = 4


class OperationNotFound(NotFound):
    pass


class OperationEnded(Conflict):
    """The operation's outcome is recorded: nothing of it runs again."""


@dataclasses.dataclass(frozen=True)
class OperationClaim:
    operation_id: int
    epoch: int


_local = threading.local()


def current_operation_claim() -> OperationClaim | None:
    return getattr(_local, "claim", None)


@contextlib.contextmanager
def operation_claimed(operation_id: int, epoch: int) -> Iterator[OperationClaim]:
    previous = current_operation_claim()
    _local.claim = OperationClaim(operation_id, epoch)
    try:
        yield _local.claim
    finally:
        _local.claim = previous


_FINISHED = [s.value for s in FINISHED_OPERATION_STATUSES]


def raise_operation_epoch(session: Session, operation_id: int) -> int:
    """A new claim: raises the operation's claim epoch and returns it, unless
    its outcome is recorded (OperationEnded)."""
    table = Operation.__table__
    epoch = session.execute(sa.update(table).where(table.c.id == operation_id, table.c.status.not_in(_FINISHED))
                            .values(claim_epoch=table.c.claim_epoch + 1).returning(table.c.claim_epoch)).scalar()
    if epoch is None:
        status = session.execute(sa.select(table.c.status).where(table.c.id == operation_id)).scalar()
        if status is None:
            raise OperationNotFound(f"operation {operation_id} does not exist")
        raise OperationEnded(f"operation {operation_id} already ended ({status})")
    return epoch


def check_operation_claim(session: Session, operation_id: int) -> None:
    """In a writing transaction: raises OperationFenced unless this thread's
    claim on the operation is current. The no-op UPDATE takes the row's lock
    (PostgreSQL) or the database's (SQLite) until the transaction commits, so
    a new claim's epoch change is ordered after what this transaction writes."""
    claim = current_operation_claim()
    if claim is None or claim.operation_id != operation_id:
        return
    table = Operation.__table__
    touched = session.execute(sa.update(table).where(table.c.id == operation_id,
                                                     table.c.claim_epoch == claim.epoch)
                              .values(claim_epoch=table.c.claim_epoch)).rowcount
    if touched != 1:
        found = session.execute(sa.select(table.c.claim_epoch).where(table.c.id == operation_id)).scalar()
        raise OperationFenced(f"operation {operation_id}: this runner's claim (epoch {claim.epoch}) was "
                              f"superseded (epoch {found}); it changes nothing more")
