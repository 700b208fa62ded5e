"""What an operation moves where: pure functions of a scheduler snapshot
(no database, driver or TaskFlow), so that a plan is shown before anything
changes (`drain --dry-run`) exactly as the operation will first make it."""
from __future__ import annotations

from typing import Iterable

from livemig.scheduler.select import Placement, Selection, plan, select
from livemig.scheduler.state import Snapshot


def plan_drain(snapshot: Snapshot, host: str, candidates: Iterable[str] | None = None,
               weigher: str = "spread") -> list[Placement]:
    """A destination for every instance on `host` (largest first, capacity
    accounted as the plan proceeds; a placement without a destination says
    why). `candidates` limits the destinations (`--to`)."""
    uuids = sorted(uuid for uuid, instance in snapshot.instances.items() if instance.host == host)
    return plan(snapshot, uuids, candidates=_others(snapshot, host, candidates), weigher=weigher)


def _others(snapshot: Snapshot, source: str | None, candidates: Iterable[str] | None) -> list[str]:
    """The candidate destinations less the source: its own refusal ("vm1
    runs there") would only add noise to every reason a move stays."""
    return [h for h in (candidates if candidates else snapshot.hosts) if h != source]


def plan_return(snapshot: Snapshot, host: str, instance_uuids: Iterable[str]) -> list[Placement]:
    """`host` as the destination of each instance a drain took off it (those
    still in the inventory): the plan says which cannot go back, and why."""
    uuids = sorted(uuid for uuid in instance_uuids if uuid in snapshot.instances
                   and snapshot.instances[uuid].host not in (None, host))
    return plan(snapshot, uuids, candidates=[host])


def replan_move(snapshot: Snapshot, instance_uuid: str, tried: Iterable[str],
                candidates: Iterable[str] | None = None, weigher: str = "spread") -> Selection:
    """The next destination for a move that failed: a host not yet tried."""
    source = snapshot.instances[instance_uuid].host if instance_uuid in snapshot.instances else None
    return select(snapshot, instance_uuid, candidates=_others(snapshot, source, candidates),
                  exclude=tuple(tried), weigher=weigher, ignore_slots=True)
