"""Fencing tokens: every claim of a migration (a conductor's claim of its job,
`migration resume`, an in-process run) raises the migration's `claim_epoch`,
and the thread that runs the flow under that claim remembers its epoch. Writes
of the migration's rows and of its flow state are conditional on it, so a
controller that was frozen or partitioned while another took over changes
nothing when it wakes; tasks call `ensure_current_claim` immediately before a
destructive action on a hypervisor, which no database condition can guard."""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Iterator

import sqlalchemy as sa

from livemig.errors import LivemigError


class Fenced(LivemigError):
    """This controller's claim on the migration is stale: another claimed it since."""

    exit_code = 4


@dataclasses.dataclass(frozen=True)
class Claim:
    migration_id: int
    epoch: int


# Per thread: TaskFlow's serial engine runs every step, and every storage write,
# in the thread that runs the engine (one migration per thread in a conductor).
_local = threading.local()


def current_claim() -> Claim | None:
    return getattr(_local, "claim", None)


@contextlib.contextmanager
def claimed(migration_id: int, epoch: int) -> Iterator[Claim]:
    """Run this thread's writes for the migration under claim `epoch`."""
    previous = current_claim()
    _local.claim = Claim(migration_id, epoch)
    try:
        yield _local.claim
    finally:
        _local.claim = previous


def epoch_matches(mid_param: str = "fence_mid", epoch_param: str = "fence_epoch") -> sa.ColumnElement:
    """The SQL condition that a claim is still its migration's current one, with
    the migration id and epoch as bound parameters (see fence_params), so that
    a statement carrying it is compiled once."""
    from livemig.persistence.models import Migration

    migrations = Migration.__table__
    # FOR SHARE (PostgreSQL): a claim raising the epoch waits for this write
    # to commit, or this write sees the new epoch; SQLite has one writer anyway.
    return sa.exists(sa.select(sa.literal(1)).where(
        migrations.c.id == sa.bindparam(mid_param, type_=sa.Integer),
        migrations.c.claim_epoch == sa.bindparam(epoch_param, type_=sa.Integer)).with_for_update(read=True))


def fence_params(claim: Claim) -> dict[str, int]:
    return {"fence_mid": claim.migration_id, "fence_epoch": claim.epoch}


def stale(claim: Claim, found_epoch: int | None) -> Fenced:
    return Fenced(f"migration {claim.migration_id}: this controller's claim (epoch {claim.epoch}) was "
                  f"superseded (epoch {found_epoch}); it changes nothing more")


def ensure_current_claim(db, migration_id: int) -> None:
    """Raises Fenced if this thread runs the migration under a claim epoch older than the migration's
    claim_epoch in the database; does nothing when no claim epoch is set for this thread."""
    claim = current_claim()
    if claim is None or claim.migration_id != migration_id:
        return
    from livemig.persistence.models import Migration

    with db.reading() as session:
        epoch = session.scalar(sa.select(Migration.claim_epoch).where(Migration.id == migration_id))
    if epoch != claim.epoch:
        raise stale(claim, epoch)
