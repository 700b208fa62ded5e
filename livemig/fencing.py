"""Fencing of stale controllers (engineer B owns the real implementation;
this placeholder lets the tasks call it before destructive actions)."""
from __future__ import annotations

from livemig.errors import LivemigError


class Fenced(LivemigError):
    """This controller's claim on the migration is stale."""


def ensure_current_claim(db, migration_id: int) -> None:
    """Raises Fenced if this thread runs the migration under a claim epoch older than the migration's
    claim_epoch in the database; does nothing when no claim epoch is set for this thread."""
