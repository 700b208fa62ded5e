"""Convergence of a busy guest (issue 16): auto-converge, post-copy, the
stall detector and force-complete, on the fake driver (its model: a guest
that dirties memory faster than the link copies it does not converge unless
throttled, switched to post-copy or paused)."""
from __future__ import annotations

import libvirt
import pytest

import livemig
from livemig.drivers.base import MigrationOptions
from livemig.drivers.libvirt_driver import _progress
from livemig.drivers.libvirt_params import convergence_call
from livemig.errors import Conflict, MigrationFailed

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


# -- the decisions (livemig.drivers.convergence), figure by figure -----------------------------------

from livemig.drivers.base import MigrationProgress  # noqa: E402
from livemig.drivers.convergence import (  # noqa: E402
    ABORT, PAUSED, POST_COPY, SET_DOWNTIME, START_POST_COPY, SUSPEND, ConvergenceControl,
)

MIB = 2**20


def _busy_passes(control, passes, *, start_s=0.0, pass_s=1.0, polls=4, throttle=None):
    """Feeds the control `passes` passes of a guest that dirties everything
    each pass (each starts at the whole memory); returns every step offered,
    each taken as the hypervisor would."""
    taken = []
    t = start_s
    for n in range(1, passes + 1):
        for k in range(polls):
            remaining = int(256 * MIB * (1 - k / polls))
            progress = MigrationProgress(fraction=0.5, memory_total=256 * MIB, memory_remaining=remaining,
                                         iteration=n, throttle_pct=throttle(n) if throttle else None)
            for step in control.next_steps(progress, t):
                control.done(step)
                taken.append((round(t, 2), step.action, step.downtime_ms or step.reason))
            if control.aborting or control.phase != "pre-copy":
                return taken
            t += pass_s / polls
    return taken


def _options(**kw):
    # A downtime schedule that would reach its maximum only after 500 s.
    return MigrationOptions(max_downtime_ms=300, timeout_s=1000, stall_s=3.0,
                            downtime_schedule=[(0.0, 100), (500.0, 300)], **kw)


def test_a_busy_guest_stalls_and_the_plain_ladder_raises_downtime_then_aborts():
    control = ConvergenceControl(_options())
    taken = _busy_passes(control, 20)
    actions = [a for _, a, _ in taken]
    assert actions == [SET_DOWNTIME, SET_DOWNTIME, ABORT]  # the schedule's first, the stall's maximum, abort
    assert taken[1][2] == 300 and taken[2][2] == "stall"
    # No stall is seen before one flat pass and stall_s without progress.
    # (the last progress: the first pass, until 0.75 s)
    assert 3.75 <= taken[1][0] < 4.5 and taken[2][0] >= taken[1][0] + 3.0


def test_the_ladder_switches_to_post_copy_when_allowed_and_pauses_when_forcing_is_the_policy():
    post = ConvergenceControl(_options(post_copy="on-stall"))
    assert [a for _, a, _ in _busy_passes(post, 20)][-1] == START_POST_COPY and post.phase == POST_COPY
    pause = ConvergenceControl(_options(timeout_action="force-complete"))
    assert [a for _, a, _ in _busy_passes(pause, 20)][-1] == SUSPEND and pause.phase == PAUSED


def test_a_rising_throttle_is_progress():
    control = ConvergenceControl(_options(auto_converge=True))
    taken = _busy_passes(control, 12, throttle=lambda n: min(99, 5 * n))
    assert [a for _, a, _ in taken] == [SET_DOWNTIME]  # the throttle rose every pass: no stall


def test_passes_that_shrink_are_progress():
    control = ConvergenceControl(_options())
    t, taken = 0.0, []
    for n in range(1, 30):
        start = int(256 * MIB / n)
        for k in range(4):
            progress = MigrationProgress(fraction=0.5, memory_total=256 * MIB, memory_remaining=start * (4 - k) // 4,
                                         iteration=n)
            for step in control.next_steps(progress, t):
                control.done(step)
                taken.append(step.action)
            t += 0.25
    assert taken == [SET_DOWNTIME]


def _take(control, progress, t, **kw):
    steps = control.next_steps(progress, t, **kw)
    for step in steps:
        control.done(step)
    return [s.action for s in steps if s.action != SET_DOWNTIME]


def test_post_copy_rules_and_force_complete():
    first = ConvergenceControl(_options(post_copy="after-first-pass"))
    progress = MigrationProgress(fraction=0.5, memory_total=MIB, memory_remaining=MIB // 2, iteration=1)
    assert _take(first, progress, 0.5) == []
    progress.iteration = 2
    assert _take(first, progress, 1.0) == [START_POST_COPY] and first.phase == POST_COPY
    later = ConvergenceControl(_options(post_copy="after-seconds", post_copy_after_s=5.0))
    assert _take(later, progress, 4.9) == [] and _take(later, progress, 5.0) == [START_POST_COPY]
    # Force-complete: post-copy if allowed, else a pause; a timeout forces when its action says so.
    assert _take(ConvergenceControl(_options()), progress, 1, force_requested=True) == [SUSPEND]
    assert _take(ConvergenceControl(_options(post_copy="on-stall")), progress, 1,
                 force_requested=True) == [START_POST_COPY]
    timed = ConvergenceControl(MigrationOptions(timeout_s=10, timeout_action="force-complete"))
    assert _take(timed, progress, 9) == [] and _take(timed, progress, 11) == [SUSPEND]
    assert _take(timed, progress, 20) == []  # paused: the copy ends by itself, nothing more to do
    aborts = ConvergenceControl(MigrationOptions(timeout_s=10))
    assert _take(aborts, progress, 11) == [ABORT] and aborts.aborting == "timeout"


def test_after_the_switch_nothing_aborts_the_job():
    control = ConvergenceControl(_options(post_copy="after-first-pass"))
    control.phase = POST_COPY
    progress = MigrationProgress(fraction=0.5, memory_total=MIB, memory_remaining=MIB // 2, iteration=2)
    assert control.next_steps(progress, 5000, abort_requested=True) == []
    assert control.notes() == ["abort requested after the switch to post-copy: the VM now lives on the "
                               "destination, the migration is not aborted"]


# -- the fake's busy guest, through a whole migration -----------------------------------------------

import threading  # noqa: E402
import time  # noqa: E402

# A 256 MiB guest over a 2560 MiB/s link: a pass takes 0.1 s; it dirties
# 10000 MiB/s, so a pass leaves all of its memory dirty (100 ms of copy, more
# than the 50 ms allowed): it never converges by itself.
BUSY = {"max_downtime_ms": 50, "stall_s": 0.3, "timeout_s": 20.0}


def _busy(cloud, dirty_mib_s=10000.0):
    cloud.driver.update_host(cloud.uri("a"), link_mib_s=2560.0)
    cloud.driver.set_dirty_rate(cloud.uri("a"), cloud.vm, dirty_mib_s)


def _steps(cloud, migration_id):
    return [(e.state, e.message) for e in livemig.show_migration(migration_id, settings=cloud.settings).events
            if e.kind == "note" and e.state in ("downtime", "post-copy", "suspend", "abort", "note")]


def test_a_busy_guest_with_plain_pre_copy_is_aborted_and_stays_on_its_source(cloud):
    _busy(cloud)
    with pytest.raises(MigrationFailed) as failed:
        livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings, options=dict(BUSY))
    view = livemig.show_migration(failed.value.migration_id, settings=cloud.settings)
    assert view.status == "failed" and cloud.running_on() == ["a"]
    assert "does not converge" in view.error_reason
    assert cloud.vm not in cloud.domains_on("b")
    steps = _steps(cloud, view.id)
    assert [s for s, _ in steps] == ["downtime", "abort"]
    assert steps[0][1] == "no progress for 0.3 s: raised the allowed downtime to 50 ms"


def test_a_busy_guest_converges_with_auto_converge(cloud):
    _busy(cloud)
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings,
                           options=dict(BUSY, auto_converge=True, auto_converge_initial=50,
                                        auto_converge_increment=25))
    assert view.status == "completed" and cloud.running_on() == ["b"]
    row = cloud.migration(view.id)
    assert row.throttle_pct == 99 and row.phase == "pre-copy"
    assert row.downtime_ms is not None and row.downtime_ms <= 50


def test_a_busy_guest_completes_in_post_copy_and_the_switch_is_in_the_trail(cloud):
    _busy(cloud)
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings,
                           options=dict(BUSY, post_copy="after-first-pass"))
    assert view.status == "completed" and cloud.running_on() == ["b"]
    row = cloud.migration(view.id)
    assert row.phase == "post-copy" and row.downtime_ms == 4
    assert ("post-copy", "the first pass is done: switched to post-copy") in _steps(cloud, view.id)
    assert cloud.vm not in cloud.domains_on("a")


def test_a_stalled_busy_guest_switches_to_post_copy_on_stall(cloud):
    _busy(cloud)
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings, options=dict(BUSY, post_copy="on-stall"))
    assert view.status == "completed" and cloud.running_on() == ["b"]
    assert [s for s, _ in _steps(cloud, view.id)] == ["downtime", "post-copy"]


def test_suspend_if_needed_pauses_a_stalled_guest_to_complete(cloud):
    _busy(cloud)
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings, policy="suspend-if-needed",
                           options=dict(BUSY))
    assert view.status == "completed" and cloud.running_on() == ["b"]
    row = cloud.migration(view.id)
    assert row.phase == "paused to complete"
    assert [s for s, _ in _steps(cloud, view.id)] == ["downtime", "suspend"]
    # The downtime is the pause: at least the pass it took to copy the rest.
    assert row.downtime_ms >= 100


def _wait_until(condition, timeout_s: float, every_s: float) -> None:
    """Polls until `condition()` holds or `timeout_s` passes; the test's own
    assertions then say what was wrong."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(every_s)


def _run_in_background(cloud, **kwargs):
    out = {}

    def run():
        try:
            out["view"] = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings, **kwargs)
        except MigrationFailed as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = cloud.last_migration()
        if row is not None and row.status == "running" and row.iteration >= 2:
            return thread, out, row.id
        time.sleep(0.05)
    raise AssertionError("the migration did not start")


def test_force_complete_pauses_a_running_migration_without_post_copy(cloud):
    _busy(cloud)
    thread, out, migration_id = _run_in_background(cloud, options=dict(BUSY, stall_s=600.0, timeout_s=60.0))
    livemig.force_complete(CTX, migration_id, settings=cloud.settings)
    thread.join(30)
    assert out["view"].status == "completed" and cloud.running_on() == ["b"]
    assert cloud.migration(migration_id).phase == "paused to complete"
    assert _steps(cloud, migration_id) == [("suspend", "force-complete requested: paused the guest so that the "
                                                       "copy completes")]


def test_force_complete_switches_to_post_copy_when_the_policy_allows_it(cloud):
    _busy(cloud)
    thread, out, migration_id = _run_in_background(cloud, options=dict(BUSY, stall_s=600.0, timeout_s=60.0,
                                                                       post_copy="on-stall"))
    livemig.force_complete(CTX, migration_id, settings=cloud.settings)
    thread.join(30)
    assert out["view"].status == "completed" and cloud.running_on() == ["b"]
    assert cloud.migration(migration_id).phase == "post-copy"
    assert [s for s, _ in _steps(cloud, migration_id)] == ["post-copy"]


def test_the_timeout_forces_completion_when_its_action_says_so(cloud):
    _busy(cloud)
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings,
                           options=dict(BUSY, stall_s=600.0, timeout_s=1.0, timeout_action="force-complete"))
    assert view.status == "completed" and cloud.migration(view.id).phase == "paused to complete"
    assert _steps(cloud, view.id)[-1] == ("suspend", "no completion within 1 s: paused the guest so that the "
                                                     "copy completes")


def test_an_abort_after_the_switch_to_post_copy_is_refused(cloud):
    # A slower post-copy (256 MiB at 200 MiB/s) leaves time to ask.
    _busy(cloud)
    thread, out, migration_id = _run_in_background(cloud, options=dict(BUSY, post_copy="after-first-pass",
                                                                       postcopy_bandwidth_mib_s=200))
    _wait_until(lambda: cloud.migration(migration_id).phase == "post-copy", 10, 0.02)
    with pytest.raises(Conflict, match="post-copy"):
        livemig.abort(CTX, migration_id, settings=cloud.settings)
    thread.join(30)
    assert out["view"].status == "completed" and cloud.running_on() == ["b"]


def test_post_copy_allowed_starts_the_job_able_to_switch_with_its_own_bandwidth():
    flags, params = convergence_call(MigrationOptions(post_copy="on-stall", postcopy_bandwidth_mib_s=40))
    assert flags == libvirt.VIR_MIGRATE_POSTCOPY
    assert params == {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY: 40}


# -- what an operator sees ---------------------------------------------------------------------------

def test_the_phase_is_shown_in_progress_and_migration_show(cloud):
    from livemig.views import MigrationView
    from tests.unit.test_cli import run

    _busy(cloud)
    # One-second passes (256 MiB/s): a throttle of 5 % and 1 more a pass
    # would take a minute and a half to converge.
    thread, out, migration_id = _run_in_background(cloud, options=dict(BUSY, stall_s=600.0, timeout_s=60.0,
                                                                       bandwidth_mib_s=256, auto_converge=True,
                                                                       auto_converge_initial=5,
                                                                       auto_converge_increment=1))
    _wait_until(lambda: cloud.migration(migration_id).throttle_pct is not None, 20, 0.05)
    running = livemig.show_migration(migration_id, settings=cloud.settings)
    assert running.phase_summary.startswith("pre-copy pass ") and ", throttle " in running.phase_summary
    shown = run(cloud.settings, "migration", "show", str(migration_id))
    phase_line = next(line for line in shown.stdout.splitlines() if line.startswith("phase "))
    assert phase_line.split()[1:3] == ["pre-copy", "pass"] and "throttle" in phase_line
    livemig.force_complete(CTX, migration_id, settings=cloud.settings)
    thread.join(30)
    done = livemig.show_migration(migration_id, settings=cloud.settings)
    assert done.phase_summary.startswith("paused to complete, throttle ")
    post = dict(running.to_dict(), phase="post-copy", postcopy_requests=812)
    assert MigrationView(**{k: v for k, v in post.items() if k != "events"}).phase_summary == \
        "post-copy, 812 page requests"


def test_migrate_prints_each_phase_once_when_not_on_a_terminal(cloud):
    from tests.unit.test_cli import run

    _busy(cloud)
    # 256 MiB/s: a one-second first pass, then a one-second post-copy.
    proc = run(cloud.settings, "migrate", "--live", "vm1", "--to", "b", "--max-downtime", "50",
               "--bandwidth", "256", "--post-copy", "after-first-pass")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("migration ")]
    assert any(line.endswith("running (post-copy)") for line in lines), lines
    assert len(lines) == len(set(lines))


# -- after the switch --------------------------------------------------------------------------------

def test_a_destination_that_loses_the_vm_after_the_switch_is_unrecoverable_and_nothing_runs_twice(cloud):
    _busy(cloud)
    thread, out, migration_id = _run_in_background(cloud, options=dict(BUSY, post_copy="after-first-pass",
                                                                       postcopy_bandwidth_mib_s=100))
    _wait_until(lambda: cloud.migration(migration_id).phase == "post-copy", 10, 0.02)
    # The destination's QEMU dies (its host crashed) with pages still on the source.
    assert cloud.driver.destroy_domain(cloud.uri("b"), cloud.vm)
    thread.join(30)
    row = cloud.migration(migration_id)
    assert row.status == "error" and "switched to post-copy and b lost the VM" in row.error_reason
    # The unrecoverable policy (terminate): the source's paused remains are destroyed, never resumed.
    assert cloud.vm not in cloud.domains_on("a") and cloud.vm not in cloud.domains_on("b")
    assert cloud.instance().state == "deleted"
