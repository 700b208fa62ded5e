"""Plain results of the operations API (livemig/views.py style)."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from livemig.persistence.models import Migration, Operation, OperationEvent, OperationMove
from livemig.views import HostView, View, _iso


@dataclasses.dataclass(frozen=True)
class MoveView(View):
    position: int
    instance_uuid: str
    instance_name: str
    source_host: str
    dest_host: str | None
    status: str
    migration_id: int | None
    migration_status: str | None
    progress: float
    reason: str | None
    # Where the plan first put it (dest_host follows re-plans and retries).
    planned_dest: str | None = None
    # A planner's wave (rebalance, consolidate): it starts once the waves before it have ended.
    wave: int | None = None

    @classmethod
    def of(cls, m: OperationMove, migration: Migration | None = None, planned_dest: str | None = None) -> "MoveView":
        progress = 1.0 if m.status == "completed" else (migration.progress if migration is not None else 0.0)
        return cls(m.position, m.instance_uuid, m.instance_name, m.source_host, m.dest_host, m.status,
                   m.migration_id, migration.status if migration is not None else None, progress, m.reason,
                   planned_dest, m.wave)

    @classmethod
    def planned(cls, position: int, move: dict[str, Any]) -> "MoveView":
        """A move of a planner's plan document (livemig.operations.fleet_plans), not recorded."""
        return cls(position, move["instance_uuid"], move["instance"], move["source"], move["dest"], "planned", None,
                   None, 0.0, "stop-over" if move.get("stop_over") else None, move["dest"], move["wave"])


@dataclasses.dataclass(frozen=True)
class OperationEventView(View):
    at: str | None
    kind: str
    message: str
    controller: str

    @classmethod
    def of(cls, e: OperationEvent) -> "OperationEventView":
        return cls(_iso(e.at), e.kind, e.message, e.controller)


@dataclasses.dataclass(frozen=True)
class OperationView(View):
    id: int | None  # None: a dry run, nothing recorded
    kind: str
    status: str
    host: str | None
    requested_by: str
    arguments: dict[str, Any]
    reason: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    abort_requested: bool
    counts: dict[str, int]
    moves: list[MoveView] = dataclasses.field(default_factory=list)
    # The plan as first made: per move, instance, source, dest and reason.
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)
    events: list[OperationEventView] = dataclasses.field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(n for status, n in self.counts.items() if status in ("completed", "failed", "skipped",
                                                                           "cancelled"))

    @classmethod
    def of(cls, o: Operation, moves: Iterable[MoveView] = (),
           events: Iterable[OperationEvent] = ()) -> "OperationView":
        moves = list(moves)
        counts: dict[str, int] = {}
        for move in moves:
            counts[move.status] = counts.get(move.status, 0) + 1
        return cls(o.id, o.kind, o.status, o.host, o.requested_by, dict(o.arguments or {}), o.reason,
                   _iso(o.created_at), _iso(o.started_at), _iso(o.finished_at), o.abort_requested, counts, moves,
                   dict(o.plan or {}), [OperationEventView.of(e) for e in events])

    @classmethod
    def dry_run(cls, kind: str, host: str | None, requested_by: str, arguments: dict[str, Any],
                moves: list[MoveView], plan: dict[str, Any] | None = None) -> "OperationView":
        """`plan`: a planner's plan document (else the moves make it)."""
        counts: dict[str, int] = {}
        for move in moves:
            counts[move.status] = counts.get(move.status, 0) + 1
        stay = counts.get("skipped", 0)
        if plan is None:
            reason = f"dry run: {len(moves) - stay} of {len(moves)} instance(s) placed; nothing changed"
            plan = {"moves": [{"instance": m.instance_name, "source": m.source_host, "dest": m.dest_host,
                               "reason": m.reason} for m in moves]}
        else:
            reason = f"dry run: {len(moves)} move(s); nothing changed"
        return cls(None, kind, "dry-run", host, requested_by, arguments, reason, None, None, None, False, counts,
                   moves, plan)


@dataclasses.dataclass(frozen=True)
class UndrainView(View):
    host: HostView
    operation: OperationView | None
