"""Convergence of a busy guest (issue 16): auto-converge, post-copy, the
stall detector and force-complete, on the fake driver (its model: a guest
that dirties memory faster than the link copies it does not converge unless
throttled, switched to post-copy or paused)."""
from __future__ import annotations

import libvirt

import livemig
from livemig.drivers.base import MigrationOptions
from livemig.drivers.libvirt_driver import _progress
from livemig.drivers.libvirt_params import convergence_call

CTX = livemig.admin_context("tests")


def _trail(cloud, migration_id: int) -> list[str]:
    return [e.message for e in livemig.show_migration(migration_id, settings=cloud.settings).events]


# -- what libvirt is told --------------------------------------------------------------------------

def test_auto_converge_sets_its_flag_and_percentages():
    flags, params = convergence_call(MigrationOptions(auto_converge=True, auto_converge_initial=60,
                                                      auto_converge_increment=20))
    assert flags & libvirt.VIR_MIGRATE_AUTO_CONVERGE
    assert params == {libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL: 60,
                      libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT: 20}
    assert convergence_call(MigrationOptions()) == (0, {})


def test_the_throttle_and_post_copy_requests_are_read_from_job_stats():
    progress = _progress({"type": 2, "memory_total": 100, "memory_processed": 60, "memory_remaining": 40,
                          "memory_iteration": 5, "auto_converge_throttle": 40, "memory_postcopy_requests": 7})
    assert (progress.iteration, progress.throttle_pct, progress.postcopy_requests) == (5, 40, 7)
    assert _progress({"type": 2}).throttle_pct is None


# -- auto-converge ----------------------------------------------------------------------------------

def test_auto_converge_records_the_throttle_in_figures_and_trail(cloud):
    cloud.driver.update_host(cloud.uri("a"), migration_seconds=0.4)
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings,
                           options={"auto_converge": True, "auto_converge_initial": 20,
                                    "auto_converge_increment": 10})
    assert view.status == "completed" and cloud.running_on() == ["b"]
    row = cloud.migration(view.id)
    assert row.throttle_pct == 30  # 20 % from the second pass, 30 % in the third (the last)
    trail = _trail(cloud, view.id)
    assert any(m.startswith("auto-converge started throttling the guest's vCPUs") for m in trail)
    assert "auto-converge throttled the guest's vCPUs up to 30 %" in trail


def test_without_auto_converge_nothing_is_throttled(cloud):
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert view.status == "completed"
    assert cloud.migration(view.id).throttle_pct is None
    assert not any("auto-converge" in m for m in _trail(cloud, view.id))
