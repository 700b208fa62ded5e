"""A real runner process SIGKILLed in every step, then `livemig migration
resume`: completed steps are not repeated and the world ends consistent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import livemig
from tests.unit.test_flow_contract import EXPECTED_STEPS

CTX = livemig.admin_context("tests")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = [(s, w) for s in EXPECTED_STEPS[1:] for w in ("before", "after")] + [("migrate-domain", "during")]


def _env(settings):
    env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=ROOT, LIVEMIG_POLL_INTERVAL_S="0.02")
    env.pop("LIVEMIG_DATABASE_URL", None)
    return env


def _die_in(settings, migration_id, step, when):
    proc = subprocess.run([sys.executable, "-m", "tests.helpers_die", settings.data_dir, str(migration_id), step,
                           when], cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _resume_cli(settings, migration_id):
    return subprocess.run([sys.executable, "-m", "livemig.cli", "migration", "resume", str(migration_id), "-q"],
                          cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=60)


def _step_states(settings, migration_id, state):
    events = livemig.show_migration(migration_id, settings=settings).events
    return [e.name for e in events if e.kind == "step" and e.state == state]


def _step_runs(settings, migration_id):
    return _step_states(settings, migration_id, "RUNNING")


@pytest.mark.parametrize("step,when", CASES, ids=[f"{s}-{w}" for s, w in CASES])
def test_sigkill_in_every_step_then_resume(tmp_path, settings, step, when):
    from tests.fakecloud import FakeCloud
    # A slow hypervisor job, so "during" really leaves it running after the kill.
    cloud = FakeCloud.build(tmp_path, settings, migration_seconds=0.8)
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=settings)
    _die_in(settings, view.id, step, when)
    ended = (step, when) == ("mark-migration-completed", "after")
    if not ended:
        assert cloud.migration(view.id).status not in ("completed", "failed", "error")
    proc = _resume_cli(settings, view.id)
    if ended:
        # Its outcome was recorded before the kill: an outcome is final, and
        # resume runs nothing (not even the step TaskFlow had not closed).
        assert proc.returncode == 4 and "already ended (completed)" in proc.stderr
        assert cloud.migration(view.id).status == "completed"
    else:
        assert proc.returncode == 0, proc.stderr
        assert f"migration {view.id}: vm1 a -> b completed" in proc.stdout
    # The world: on b only, inventory agrees, nothing held, source tidied.
    assert cloud.running_on() == ["b"]
    assert cloud.instance().host == "b" and cloud.instance().state == "running"
    assert cloud.reservations() == []
    # The source's filter and secret were there before livemig: they stay.
    assert "sg-web" in cloud.host_record("a")["filters"] and "vol-1" in cloud.host_record("a")["secrets"]
    # Side effects happened once: one hypervisor migration, one secret copy, one filter definition.
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 1
    assert cloud.driver.call_count(cloud.uri("b"), "copy_secret") == 1
    assert cloud.driver.call_count(cloud.uri("b"), "define_filter") == 1
    # Steps that had completed before the kill did not run again.
    runs = _step_runs(settings, view.id)
    killed_at = EXPECTED_STEPS.index(step)
    for done in EXPECTED_STEPS[:killed_at]:
        assert runs.count(done) == 1, (done, runs)
    # The step that was RUNNING is re-run (TaskFlow does not notify RUNNING
    # twice) and every step succeeded exactly once.
    assert _step_states(settings, view.id, "SUCCESS") == (EXPECTED_STEPS[:-1] if ended else EXPECTED_STEPS)


def test_sigkill_during_revert_then_resume_finishes_the_revert(tmp_path, settings):
    from tests.fakecloud import FakeCloud
    cloud = FakeCloud.build(tmp_path, settings)
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "error", "destination refused")
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=settings)
    # Die in the revert of the network step, after it removed its filter.
    _die_in(settings, view.id, "set-up-network-on-destination", "revert")
    proc = _resume_cli(settings, view.id)
    assert proc.returncode == 1
    assert "destination refused" in proc.stderr
    assert cloud.migration(view.id).status == "failed"
    assert cloud.running_on() == ["a"] and cloud.instance().state == "running"
    assert cloud.host_record("b")["filters"] == {} and cloud.host_record("b")["secrets"] == {}
    assert cloud.reservations() == []


def test_resume_refuses_a_finished_or_running_migration(tmp_path, settings):
    from tests.fakecloud import FakeCloud
    cloud = FakeCloud.build(tmp_path, settings)
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=settings)
    proc = _resume_cli(settings, view.id)
    assert proc.returncode == 4 and "already ended (completed)" in proc.stderr
    assert cloud.running_on() == ["b"]
