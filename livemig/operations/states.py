"""An operation's and a move's statuses (their values are what the DB holds)."""
from __future__ import annotations

import enum


class OperationKind(str, enum.Enum):
    DRAIN = "drain"
    # `host undrain --return`: the instances a drain moved go back.
    RETURN = "return"
    # Fleet-wide: a planner's plan (livemig.planning), run wave after wave.
    REBALANCE = "rebalance"
    CONSOLIDATE = "consolidate"

    @property
    def planned(self) -> bool:
        """Its moves are a planner's waves, run as planned: a failed move is
        not re-planned elsewhere (that would undo the plan)."""
        return self in (OperationKind.REBALANCE, OperationKind.CONSOLIDATE)


class OperationStatus(str, enum.Enum):
    PLANNING = "planning"
    RUNNING = "running"
    ABORTING = "aborting"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in FINISHED_OPERATION_STATUSES


FINISHED_OPERATION_STATUSES = frozenset(
    {OperationStatus.COMPLETED, OperationStatus.PARTIAL, OperationStatus.FAILED, OperationStatus.ABORTED})


class MoveStatus(str, enum.Enum):
    PLANNED = "planned"        # not submitted yet (again, after a failure re-planned it)
    SUBMITTED = "submitted"    # its migration is recorded, queued for its hosts
    RUNNING = "running"        # its migration holds its hosts
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"        # never submitted: no room, not running, already elsewhere
    CANCELLED = "cancelled"    # the operation was aborted before it started

    @property
    def finished(self) -> bool:
        return self in FINISHED_MOVE_STATUSES

    @property
    def in_flight(self) -> bool:
        return self in (MoveStatus.SUBMITTED, MoveStatus.RUNNING)


FINISHED_MOVE_STATUSES = frozenset(
    {MoveStatus.COMPLETED, MoveStatus.FAILED, MoveStatus.SKIPPED, MoveStatus.CANCELLED})
