"""Drains as jobs on real ZooKeeper, run by real conductor processes: two
drains and single migrations at once on overlapping hosts never exceed a
host's limit, and a conductor killed mid-drain is replaced by another that
continues the drain without moving anything twice."""
from __future__ import annotations

import collections
import time

import sqlalchemy as sa

import livemig
from livemig.persistence.models import Migration, OperationEvent
from tests.drainfleet import CTX, Fleet
from tests.functional.test_conductors import conductors, zk_settings  # noqa: F401 - fixtures

FINISHED = ("completed", "partial", "failed", "aborted")


def _wait_operations(settings, ids, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = [livemig.show_operation(i, settings=settings) for i in ids]
        if all(v.status in FINISHED for v in views):
            return views
        time.sleep(0.2)
    raise TimeoutError(f"operations {ids} did not finish: {[v.status for v in views]}")


def _claimed_by(fleet, operation_id) -> list[str]:
    with fleet.db().reading() as s:
        return [e.message for e in s.scalars(sa.select(OperationEvent).where(
            OperationEvent.operation_id == operation_id, OperationEvent.kind == "claimed")
            .order_by(OperationEvent.id))]


def _wait(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_two_drains_and_single_migrations_on_two_conductors_never_exceed_a_limit(tmp_path, zk_settings,
                                                                                 conductors):
    fleet = Fleet.build(tmp_path, zk_settings, sources={"s1": 6, "s2": 6},
                        dests={"d1": {}, "d2": {}, "d3": {}, "d4": {}}, migration_seconds=0.3, source_limit=2,
                        limits={"d1": 1, "d2": 2, "d3": 1, "d4": 2})
    singles = [fleet.add_instance("d1", f"single{i}", 512, 100 + i) for i in range(3)]
    livemig.sync_hosts(CTX, settings=zk_settings)
    conductors.start("c1")
    conductors.start("c2")
    first = livemig.drain_host(CTX, "s1", to=["d1", "d2", "d3"], wait=False, settings=zk_settings)
    second = livemig.drain_host(CTX, "s2", to=["d2", "d3", "d4"], wait=False, settings=zk_settings)
    migrations = [livemig.migrate(CTX, uuid, "d1", dest, wait=False, settings=zk_settings).id
                  for uuid, dest in zip(singles, ["d2", "d3", "d4"])]
    views = _wait_operations(zk_settings, [first.id, second.id])
    assert [v.status for v in views] == ["completed", "completed"], [v.reason for v in views]
    for migration_id in migrations:
        _wait(lambda: livemig.show_migration(migration_id, settings=zk_settings).status == "completed",
              f"migration {migration_id} did not complete")
    fleet.assert_invariants()
    concurrency = fleet.max_concurrency()  # assert_invariants checked each against its limit
    assert set(concurrency) == {"s1", "s2", "d1", "d2", "d3", "d4"}, concurrency
    # The two drains really ran at once (each started before the other ended).
    assert max(v.started_at for v in views) < min(v.finished_at for v in views)
    assert livemig.list_instances("s1", settings=zk_settings) == []
    assert livemig.list_instances("s2", settings=zk_settings) == []
    assert all(claims and claims[0].startswith("by conductor c") for claims in
               (_claimed_by(fleet, first.id), _claimed_by(fleet, second.id)))


def test_a_conductor_killed_mid_drain_is_replaced_by_another(tmp_path, zk_settings, conductors):
    fleet = Fleet.build(tmp_path, zk_settings, count=10, dests={"d1": {}, "d2": {}, "d3": {}},
                        migration_seconds=0.6, source_limit=2)
    conductors.start("c1")
    view = livemig.drain_host(CTX, "src", wait=False, settings=zk_settings)
    # c1, alone, claims the drain and its first moves.
    _wait(lambda: _claimed_by(fleet, view.id), "nobody claimed the drain")

    def going() -> bool:
        counts = livemig.show_operation(view.id, settings=zk_settings).counts
        return counts.get("completed", 0) >= 2 and counts.get("submitted", 0) + counts.get("running", 0) >= 1

    _wait(going, "the drain did not get going")
    conductors.procs["c1"].kill()
    conductors.procs["c1"].wait()
    in_flight = [m.id for m in fleet.migrations() if m.status not in ("completed", "failed", "cancelled", "error")]
    assert in_flight  # killed with moves in flight: their migrations are c2's to finish
    conductors.start("c2")
    (done,) = _wait_operations(zk_settings, [view.id])
    assert done.status == "completed", done.reason
    claims = _claimed_by(fleet, view.id)
    assert [c.split(" (")[0] for c in claims] == ["by conductor c1", "by conductor c2"]
    fleet.assert_invariants()
    assert collections.Counter(m.instance_uuid for m in fleet.migrations()) == collections.Counter(list(fleet.instances))
    with fleet.db().reading() as s:
        statuses = {m.id: m.status for m in s.scalars(sa.select(Migration))}
    assert all(statuses[m] == "completed" for m in in_flight)


def test_drains_never_take_a_conductors_last_slot(tmp_path, zk_settings, conductors):
    """One conductor with two slots and two drains at once: were both drains
    to hold a slot, their moves (migration jobs) could never be claimed. An
    operation never takes a conductor's last slot, so both drains finish."""
    fleet = Fleet.build(tmp_path, zk_settings, sources={"s1": 2, "s2": 2}, dests={"d1": {}, "d2": {}},
                        migration_seconds=0.2)
    conductors.start("c1", env={"LIVEMIG_CONDUCTOR_MAX_MIGRATIONS": "2"})
    first = livemig.drain_host(CTX, "s1", wait=False, settings=zk_settings)
    second = livemig.drain_host(CTX, "s2", wait=False, settings=zk_settings)
    views = _wait_operations(zk_settings, [first.id, second.id], timeout=120.0)
    assert [v.status for v in views] == ["completed", "completed"], [v.reason for v in views]
    fleet.assert_invariants()
