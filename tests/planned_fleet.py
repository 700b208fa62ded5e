"""Hand-made plan documents (livemig.operations.fleet_plans' format) for a
drainfleet.Fleet, so that the operation that runs a planner's plan is
tested apart from the planners, and the checks those tests make: where each
instance ends, moved at most once per planned move, and wave order judged
from the migrations' own timestamps."""
from __future__ import annotations

import collections

import sqlalchemy as sa

from livemig.persistence.models import Migration, OperationMove
from tests.drainfleet import Fleet


def plan_document(fleet: Fleet, kind: str, moves: list[tuple[str, str, str, int]],
                  emptied: tuple[str, ...] = ()) -> dict:
    """`moves`: (instance name, source, dest, wave)."""
    uuid_of = {name: uuid for uuid, name in fleet.instances.items()}
    return {"kind": kind, "method": "by hand", "optimal": False, "emptied": list(emptied), "figures": {},
            "notes": [], "hosts": [], "measured": False,
            "moves": [{"instance_uuid": uuid_of[name], "instance": name, "source": source, "dest": dest,
                       "wave": wave, "memory_mb": 1024, "stop_over": False}
                      for name, source, dest, wave in moves]}


def assert_waves_in_order(fleet: Fleet, operation_id: int) -> None:
    """No migration of a wave was recorded before every migration of the
    waves before it had ended."""
    with fleet.db().reading() as s:
        waves = {m.migration_id: m.wave for m in s.scalars(sa.select(OperationMove).where(
            OperationMove.operation_id == operation_id)) if m.migration_id is not None}
        migrations = list(s.scalars(sa.select(Migration).where(Migration.operation_id == operation_id)))
    by_wave: dict[int, list[Migration]] = collections.defaultdict(list)
    for migration in migrations:
        by_wave[waves[migration.id]].append(migration)
    ordered = sorted(by_wave)
    for earlier, later in zip(ordered, ordered[1:]):
        ended = max(m.finished_at for m in by_wave[earlier])
        started = min(m.created_at for m in by_wave[later])
        assert started >= ended, f"wave {later} started at {started}, before wave {earlier} ended at {ended}"


def where(fleet: Fleet) -> dict[str, str]:
    """instance name -> the one host whose hypervisor runs it."""
    found = {}
    for uuid, hosts in fleet.hosts_running().items():
        assert len(hosts) == 1, f"{fleet.instances[uuid]} runs on {hosts}"
        found[fleet.instances[uuid]] = hosts[0]
    return found
