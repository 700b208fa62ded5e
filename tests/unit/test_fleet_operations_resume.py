"""kill -9 of the process running a consolidation or a rebalance, in
planning, submitting and waiting, then `operation resume`: each instance
ends where the plan put it, moved once, the waves in order, the emptied
hosts in standby."""
from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa

import livemig
from livemig.persistence.models import Host, Migration, Operation
from tests.drainfleet import CTX, Fleet
from tests.planned_fleet import assert_waves_in_order, plan_document, where
from tests.unit.test_operations_resume import ROOT, _env

# Six instances on a, b, c, d (a fleet of 2-slot hosts): the consolidation
# packs c's and d's onto a and b in three waves and empties c and d.
SOURCES = {"a": 2, "b": 1, "c": 2, "d": 1}
CONSOLIDATION = [("vm03", "c", "a", 1), ("vm05", "d", "b", 1), ("vm04", "c", "b", 2), ("vm02", "b", "a", 2),
                 ("vm01", "a", "b", 3)]
ENDS = {"vm00": "a", "vm01": "b", "vm02": "a", "vm03": "a", "vm04": "b", "vm05": "b"}


def _run_and_die(tmp_path, settings, plan, point, n):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    proc = subprocess.run([sys.executable, "-m", "tests.helpers_die_operation", settings.data_dir, f"plan={path}",
                           point, str(n)], cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


CASES = [("planning", 1), ("submitting", 2), ("submitted", 3), ("waiting", 2), ("waiting", 4)]


@pytest.mark.parametrize("point,n", CASES, ids=[f"{p}-{n}" for p, n in CASES])
def test_a_consolidation_killed_and_resumed_moves_each_instance_once_in_wave_order(tmp_path, settings, point, n):
    fleet = Fleet.build(tmp_path, settings, sources=SOURCES, dests={}, source_limit=2, migration_seconds=0.3)
    _run_and_die(tmp_path, settings, plan_document(fleet, "consolidate", CONSOLIDATION, emptied=("c", "d")),
                 point, n)
    with fleet.db().reading() as s:
        operation = s.scalars(sa.select(Operation)).one()
        before = list(s.scalars(sa.select(Migration)))
    assert operation.status in ("planning", "running") and operation.kind == "consolidate"
    if point == "submitting":
        assert len(before) == n - 1  # the Nth submission's transaction died with the process
    if point == "waiting":
        assert any(m.status not in ("completed", "failed") for m in before)  # killed with moves in flight
    view = livemig.resume_operation(CTX, operation.id, settings=settings)
    assert view.status == "completed", view.reason
    assert where(fleet) == ENDS
    fleet.assert_invariants()
    migrations = fleet.migrations()
    # One migration per planned move: nothing submitted twice, nothing re-moved.
    assert collections.Counter(m.instance_name for m in migrations) == collections.Counter(
        name for name, *_ in CONSOLIDATION)
    assert all(m.status == "completed" for m in migrations)
    assert_waves_in_order(fleet, operation.id)
    with fleet.db().reading() as s:
        standby = {h.name for h in s.scalars(sa.select(Host).where(Host.standby.is_(True)))}
    assert standby == {"c", "d"}
    assert view.reason.endswith("in standby: c, d")


def test_a_rebalance_killed_while_waiting_is_resumed_from_the_command_line(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, sources={"a": 4, "b": 0, "c": 0}, dests={}, source_limit=2,
                        migration_seconds=0.4)
    plan = plan_document(fleet, "rebalance", [("vm00", "a", "b", 1), ("vm01", "a", "c", 1), ("vm02", "a", "b", 2)])
    _run_and_die(tmp_path, settings, plan, "waiting", 1)
    with fleet.db().reading() as s:
        operation = s.scalars(sa.select(Operation)).one()
    resumed = subprocess.run([sys.executable, "-m", "livemig.cli", "operation", "resume", str(operation.id)],
                             cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"operation {operation.id}: rebalance" in resumed.stdout and "completed: 3 moved" in resumed.stdout
    assert where(fleet) == {"vm00": "b", "vm01": "c", "vm02": "b", "vm03": "a"}
    assert_waves_in_order(fleet, operation.id)
    assert collections.Counter(m.instance_name for m in fleet.migrations()) == {"vm00": 1, "vm01": 1, "vm02": 1}
    with fleet.db().reading() as s:
        assert not list(s.scalars(sa.select(Host).where(Host.standby.is_(True))))  # a rebalance empties nothing
