"""Rebalance and consolidate as operations on the fake driver, with
hand-made plans (the planners are tested on their own): waves run in order,
a failed move is not re-planned elsewhere and a move that counted on it is
refused by its precheck rather than overfilling a host, emptied hosts go to
standby, and `host wake` brings one back."""
from __future__ import annotations

import sqlalchemy as sa
import pytest

import livemig
from livemig.errors import InvalidInput, NoValidHost, HostNotFound
from livemig.persistence.models import Host, Migration
from tests.drainfleet import CTX, Fleet
from tests.planned_fleet import assert_waves_in_order, plan_document, where


def _fleet(tmp_path, settings, **kwargs) -> Fleet:
    kwargs.setdefault("sources", {"a": 2, "b": 2, "c": 1})
    return Fleet.build(tmp_path, settings, dests={}, source_limit=2, migration_seconds=0.2, **kwargs)


def _host(fleet: Fleet, name: str) -> Host:
    with fleet.db().reading() as s:
        return s.get(Host, name)


def test_a_consolidation_runs_wave_after_wave_and_puts_the_emptied_hosts_in_standby(tmp_path, settings):
    fleet = _fleet(tmp_path, settings)
    plan = plan_document(fleet, "consolidate", [("vm02", "b", "a", 1), ("vm04", "c", "a", 1),
                                                ("vm03", "b", "a", 2)], emptied=("b", "c"))
    view = livemig.consolidate_fleet(CTX, plan=plan, settings=settings)
    assert view.status == "completed", view.reason
    assert view.reason == "3 moved; in standby: b, c"
    assert set(where(fleet).values()) == {"a"}
    fleet.assert_invariants()
    assert_waves_in_order(fleet, view.id)
    for name in ("b", "c"):
        host = _host(fleet, name)
        assert host.standby and host.standby_reason == f"emptied by consolidation (operation {view.id})"
    assert not _host(fleet, "a").standby
    # The scheduler places nothing on a host in standby, and says why.
    with pytest.raises(NoValidHost, match="b: standby: host is in standby"):
        livemig.migrate(CTX, "vm00", settings=settings)
    livemig.wake_host(CTX, "b", settings=settings)
    assert not _host(fleet, "b").standby
    assert livemig.migrate(CTX, "vm00", settings=settings).dest_host == "b"


def test_a_failed_move_is_not_replanned_and_the_move_that_counted_on_it_is_refused(tmp_path, settings):
    # a holds two 1 GiB instances in 2 GiB; the plan frees room on a (wave 1)
    # before it moves vm02 there (wave 2). c and d have room all along: a
    # drain would re-plan the failed move there, a plan must not.
    fleet = Fleet.build(tmp_path, settings, sources={"a": 2, "b": 1}, dests={"c": {}, "d": {}}, source_limit=2,
                        migration_seconds=0.1)
    fleet.driver.update_host(fleet.uri("a"), memory_mb=2048)
    livemig.sync_hosts(CTX, settings=settings)
    with fleet.db().session() as s:
        s.get(Host, "a").memory_mb = 2048
    fleet.driver.inject_fault(fleet.uri("a"), "migrate", "error", "the network broke")
    plan = plan_document(fleet, "rebalance", [("vm00", "a", "c", 1), ("vm02", "b", "a", 2)])
    view = livemig.rebalance_fleet(CTX, plan=plan, settings=settings)
    assert view.status == "partial", view.reason
    moves = {m.instance_name: m for m in view.moves}
    assert moves["vm00"].status == "failed" and "not re-planned" in moves["vm00"].reason
    assert "the network broke" in moves["vm00"].reason
    assert moves["vm02"].status == "failed" and "refused by a" in moves["vm02"].reason
    assert "memory" in moves["vm02"].reason
    assert where(fleet) == {"vm00": "a", "vm01": "a", "vm02": "b"}
    # One migration (the failed one): nothing went to d, nothing overfilled a.
    migrations = fleet.migrations()
    assert [(m.instance_name, m.dest_host, m.status) for m in migrations] == [("vm00", "c", "failed")]


def test_a_stop_over_moves_one_instance_twice_as_planned(tmp_path, settings):
    fleet = _fleet(tmp_path, settings, sources={"a": 1, "b": 1, "c": 0})
    plan = plan_document(fleet, "rebalance", [("vm00", "a", "c", 1), ("vm01", "b", "a", 2),
                                              ("vm00", "c", "b", 3)])
    plan["moves"][0]["stop_over"] = True
    view = livemig.rebalance_fleet(CTX, plan=plan, settings=settings)
    assert view.status == "completed", view.reason
    assert where(fleet) == {"vm00": "b", "vm01": "a"}
    assert_waves_in_order(fleet, view.id)
    assert [(m.instance_name, m.source_host, m.dest_host) for m in fleet.migrations()] == [
        ("vm00", "a", "c"), ("vm01", "b", "a"), ("vm00", "c", "b")]


def test_a_rebalance_without_a_plan_or_max_moves_is_planned_by_livemig(tmp_path, settings):
    # No plan given and no --max-moves: livemig plans it (by allocation,
    # nothing sampled), capped by the planner's default.
    fleet = _fleet(tmp_path, settings, sources={"a": 4, "b": 0})
    dry = livemig.rebalance_fleet(CTX, dry_run=True, settings=settings)
    assert dry.plan["kind"] == "rebalance" and dry.plan["measured"] is False
    assert fleet.migrations() == []
    view = livemig.rebalance_fleet(CTX, settings=settings)
    assert view.status == "completed", view.reason
    assert len(view.moves) == 2 and all(m.dest_host == "b" for m in view.moves)
    assert sorted(where(fleet).values()) == ["a", "a", "b", "b"]
    fleet.assert_invariants()


def test_one_fleet_wide_plan_at_a_time(tmp_path, settings):
    fleet = _fleet(tmp_path, settings)
    with fleet.db().session() as s:
        from livemig.operations.records import create_operation

        create_operation(s, "consolidate", "tests", None, {}).status = "running"
    plan = plan_document(fleet, "rebalance", [("vm04", "c", "b", 1)])
    with pytest.raises(livemig.LivemigError, match="a fleet-wide plan\\) is not finished"):
        livemig.rebalance_fleet(CTX, plan=plan, settings=settings)
    assert fleet.migrations() == []


def test_wake_refuses_an_unknown_host_and_one_not_in_standby(tmp_path, settings):
    fleet = _fleet(tmp_path, settings)
    with pytest.raises(HostNotFound):
        livemig.wake_host(CTX, "nowhere", settings=settings)
    with pytest.raises(InvalidInput, match="host a is not in standby"):
        livemig.wake_host(CTX, "a", settings=settings)
    assert not _host(fleet, "a").standby


def test_a_plan_of_another_kind_is_refused(tmp_path, settings):
    fleet = _fleet(tmp_path, settings)
    plan = plan_document(fleet, "consolidate", [("vm04", "c", "b", 1)])
    with pytest.raises(InvalidInput, match="not a rebalance plan"):
        livemig.rebalance_fleet(CTX, plan=plan, settings=settings)
    with fleet.db().reading() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Migration)) == 0
