"""What a running migration job needs next, decided poll by poll from its
figures and the migration's options: the same decisions for every driver
(the libvirt driver and the fake apply them), so that they are tested fast.

The steps, in the spirit of oVirt's convergence schedules and Nova's
force-complete:
- the downtime schedule raises the allowed downtime as the job ages;
- the post-copy rule switches after the first pass or after N seconds;
- an operator's abort aborts (not after the switch to post-copy: the VM's
  home is then the destination, and libvirt refuses);
- force-complete (an operator's, or the timeout's when the policy says so)
  switches to post-copy if the policy allows it, else pauses the guest so
  that the copy ends (its downtime is the pause);
- the timeout aborts when its action is "abort";
- the stall detector: no new low of `memory_remaining` for `stall_s` means
  the job does not converge, and the next step of the ladder is taken: the
  maximum downtime, post-copy (if allowed), a pause (if the policy completes
  by force), and last an abort. Each step gets `stall_s` to work. While
  auto-converge raises its throttle the job counts as progressing: the
  throttle is the step that is being taken (libvirt cannot start it after the
  job has started, so it is on from the start or never).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from livemig.drivers.base import MigrationOptions, MigrationProgress

PRE_COPY = "pre-copy"
POST_COPY = "post-copy"
PAUSED = "paused to complete"

# Step actions.
SET_DOWNTIME = "downtime"
START_POST_COPY = "post-copy"
SUSPEND = "suspend"
ABORT = "abort"


@dataclasses.dataclass(frozen=True)
class Step:
    """One change of the running job. `why` is what the trail says (empty for
    the routine downtime schedule); `reason` is why an abort ends the job:
    "abort" (an operator), "timeout" or "stall"."""

    action: str
    why: str = ""
    downtime_ms: int = 0
    reason: str = ""


class ConvergenceControl:
    """Follows one job. `next_steps` says what to do now; the driver applies
    each step and calls `done(step)` when the hypervisor took it (a refused
    step, e.g. a switch asked for before the job really started, is offered
    again at the next poll)."""

    def __init__(self, options: MigrationOptions):
        self.options = options
        self.phase = options.phase or PRE_COPY
        self.allowed_downtime_ms: int | None = None
        self.force_requested = False  # an operator's force-complete, seen once
        self.forced = False  # force-complete acted (switch or pause) already
        self.aborting: str | None = None
        # What each pass started with (see _progressed).
        self._pass: int | None = None
        self._pass_start: int | None = None
        self._lowest: int | None = None
        self._flat_passes = 0
        self._low_at: float | None = None
        self._throttle: int | None = None
        self._abort_refused = False
        self._downtime_raised = False
        self._notes: list[str] = []

    # -- what the driver asks
    @property
    def switched(self) -> bool:
        return self.phase == POST_COPY

    @property
    def paused_by_us(self) -> bool:
        return self.phase == PAUSED

    def notes(self) -> list[str]:
        """Trail messages that are not steps (an abort refused after the
        switch); each returned once."""
        notes, self._notes = self._notes, []
        return notes

    def next_steps(self, progress: MigrationProgress | None, elapsed_s: float, *, abort_requested: bool = False,
                   force_requested: bool = False) -> list[Step]:
        if self.aborting is not None:
            return []
        if self.phase == POST_COPY:
            if abort_requested and not self._abort_refused:
                self._abort_refused = True
                self._notes.append("abort requested after the switch to post-copy: the VM now lives on the "
                                   "destination, the migration is not aborted")
            return []
        if abort_requested:
            return [Step(ABORT, "aborted by request", reason="abort")]
        steps: list[Step] = []
        if force_requested and not self.force_requested:
            self.force_requested = True
            if self.phase == PRE_COPY:
                steps.append(self._force_step("force-complete requested"))
        if self.phase == PRE_COPY and elapsed_s > self.options.timeout_s and not self.forced:
            if self.options.timeout_action == "force-complete":
                steps.append(self._force_step(f"no completion within {self.options.timeout_s:.0f} s"))
            else:
                return [Step(ABORT, f"no completion within {self.options.timeout_s:.0f} s; aborted",
                             reason="timeout")]
        if self.phase == PRE_COPY and not steps:
            steps.extend(self._post_copy_rule(progress, elapsed_s))
        if self.phase == PRE_COPY and not steps:
            steps.extend(self._stall_steps(progress, elapsed_s))
        wanted = self._wanted_downtime(elapsed_s)
        if wanted != self.allowed_downtime_ms and not any(s.action == SET_DOWNTIME for s in steps):
            steps.insert(0, Step(SET_DOWNTIME, downtime_ms=wanted))
        return _first_of_each(steps)

    def take_steps(self, progress: MigrationProgress | None, elapsed_s: float, *, abort_requested: bool,
                   apply: Callable[[Step], bool]) -> None:
        """One poll: records the notes, then applies this poll's steps with the
        driver's `apply` (which returns whether the hypervisor took the step),
        each fenced first: options.may_change_job raises Fenced if another
        controller owns the migration now, and nothing more is changed."""
        steps = self.next_steps(progress, elapsed_s, abort_requested=abort_requested,
                                force_requested=self.options.force_requested())
        for note in self.notes():
            self.options.record_step("note", note)
        for step in steps:
            self.options.may_change_job()
            if apply(step):
                self.done(step)
                if step.why:
                    self.options.record_step(step.action, step.why)

    def done(self, step: Step) -> None:
        if step.action == SET_DOWNTIME:
            self.allowed_downtime_ms = step.downtime_ms
            if step.downtime_ms >= self.options.max_downtime_ms:
                self._downtime_raised = True
        elif step.action == START_POST_COPY:
            self.phase = POST_COPY
        elif step.action == SUSPEND:
            self.phase = PAUSED
        elif step.action == ABORT:
            self.aborting = step.reason
        if step.action in (START_POST_COPY, SUSPEND) and (self.force_requested or step.reason == "force"):
            self.forced = True
        # A step of the ladder gets its own stall_s (and pass) to work.
        if step.why:
            self._low_at = None

    # -- the rules
    def _force_step(self, why: str) -> Step:
        if self.options.post_copy_allowed:
            return Step(START_POST_COPY, f"{why}: switched to post-copy", reason="force")
        return Step(SUSPEND, f"{why}: paused the guest so that the copy completes", reason="force")

    def _post_copy_rule(self, progress: MigrationProgress | None, elapsed_s: float) -> list[Step]:
        rule = self.options.post_copy
        if rule == "after-first-pass" and progress is not None and progress.iteration >= 2:
            return [Step(START_POST_COPY, "the first pass is done: switched to post-copy")]
        if rule == "after-seconds" and elapsed_s >= self.options.post_copy_after_s and _started(progress):
            return [Step(START_POST_COPY, f"{self.options.post_copy_after_s:g} s into the job: switched to "
                                          f"post-copy")]
        return []

    def _stall_steps(self, progress: MigrationProgress | None, elapsed_s: float) -> list[Step]:
        if not _started(progress):
            return []
        assert progress is not None
        if self._progressed(progress) or self._low_at is None:
            self._low_at = elapsed_s
            self._flat_passes = 0
            return []
        # A long pass is not a stall: at least one pass must have ended no
        # lower than the best before it.
        if elapsed_s - self._low_at < self.options.stall_s or self._flat_passes < 1:
            return []
        stalled = f"no progress for {self.options.stall_s:g} s"
        maximum = int(self.options.max_downtime_ms)
        if not self._downtime_raised and (self.allowed_downtime_ms or 0) < maximum:
            return [Step(SET_DOWNTIME, f"{stalled}: raised the allowed downtime to {maximum} ms",
                         downtime_ms=maximum)]
        if self.options.post_copy_allowed:
            return [Step(START_POST_COPY, f"{stalled}: switched to post-copy")]
        if self.options.timeout_action == "force-complete":
            return [Step(SUSPEND, f"{stalled}: paused the guest so that the copy completes")]
        return [Step(ABORT, f"{stalled}: the migration does not converge; aborted", reason="stall")]

    def _progressed(self, progress: MigrationProgress) -> bool:
        """Whether the job made progress since the last poll. Within a pass
        memory_remaining always falls (pages are sent; what the guest dirties
        is only added when the pass ends), so the figure that tells
        convergence is what each pass starts with: the previous pass's dirty
        rest. Progress is the first pass, a pass that starts lower than every
        earlier one (by 1 %: sampling jitter is not progress),
        or auto-converge raising its throttle."""
        throttle = progress.throttle_pct
        rising = throttle is not None and (self._throttle is None or throttle > self._throttle)
        if throttle is not None:
            self._throttle = max(throttle, self._throttle or 0)
        iteration, remaining = progress.iteration, progress.memory_remaining
        new_low = False
        if iteration != self._pass:
            if self._pass is not None and self._pass_start is not None:
                # The pass that just ended started at the highest figure it showed.
                margin = max((self._lowest or 0) // 100, 1)
                if self._lowest is None or self._pass_start <= self._lowest - margin:
                    new_low = self._lowest is not None
                    self._lowest = self._pass_start if self._lowest is None else min(self._lowest,
                                                                                     self._pass_start)
                elif self._pass > 1:
                    self._flat_passes += 1
            self._pass, self._pass_start = iteration, remaining
        else:
            self._pass_start = max(self._pass_start or 0, remaining)
        return rising or new_low or iteration <= 1

    def _wanted_downtime(self, elapsed_s: float) -> int:
        scheduled = self.options.downtime_at(elapsed_s)
        return max(scheduled, int(self.options.max_downtime_ms)) if self._downtime_raised else scheduled


def _started(progress: MigrationProgress | None) -> bool:
    """libvirt reports a job's figures only ~0.3 s into it."""
    return progress is not None and progress.memory_total > 0


def _first_of_each(steps: list[Step]) -> list[Step]:
    """At most one step per action, the first (a force and a rule may both
    ask to switch)."""
    seen: set[str] = set()
    kept = []
    for step in steps:
        if step.action not in seen:
            seen.add(step.action)
            kept.append(step)
    return kept
