"""The live migration itself."""
from __future__ import annotations

import time
from typing import Any

from taskflow.types.failure import Failure

from livemig import fencing
from livemig.disk_sharing import copied_targets, needs_unsafe_flag, storage_plan_for
from livemig.drivers.base import (
    DriverError, MigrationDestination, MigrationOptions, MigrationProgress, MigrationResult, downtime_schedule,
)
from livemig.errors import LivemigError
from livemig.locator import Presence, locate_on, require_known
from livemig.drivers.convergence import PAUSED, POST_COPY, START_POST_COPY, SUSPEND
from livemig.persistence.inventory import add_event, get_host, get_migration
from livemig.persistence.models import Instance
from livemig.states import MigrationStatus
from livemig.tasks.base import LOG, MigrationTask
from livemig.tasks.undo import StillFailing, never_raises, record_leftover_for_reconcile, with_backoff

# How long a revert keeps asking a host that does not answer: a destination
# whose daemon just died is often back within seconds (restarted by its
# supervisor), and the orphan it holds must not be missed.
REVERT_HOST_WAIT_S = 20.0
# In execute a host that does not answer fails the step (its revert asks again).
EXECUTE_PATIENCE_S = 2.0
# The policy options the driver applies as they are (the others become the
# settings-based downtime schedule and timeout).
DRIVER_POLICY_OPTIONS = ("postcopy_bandwidth_mib_s", "auto_converge", "auto_converge_initial",
                         "auto_converge_increment", "post_copy", "post_copy_after_s", "timeout_action", "stall_s",
                         "tls", "parallel_connections", "compression", "copy_storage")


# The phase a convergence step puts the job in.
STEP_PHASES = {START_POST_COPY: POST_COPY, SUSPEND: PAUSED}


class DomainLost(DriverError):
    """The VM runs on neither host: nothing to migrate, nothing to roll back to."""


class DomainNotRunning(DriverError):
    """The VM is on its source but not running (paused, suspended, shut off):
    it is not migrated, and it stays where it is."""


class DestinationHoldsCopy(DriverError):
    """The destination holds a copy of the VM that is not this migration's
    paused incoming copy (an operator's suspended VM, a defined shut-off
    one): it is kept, and the VM is not migrated over it."""


class MigrateDomain(MigrationTask):
    """Live-migrates the VM and verifies it runs on the destination only.

    Re-executed after a crash it looks first: a VM already on the destination
    is done, a migration job still running on the source is followed (with
    its downtime schedule and timeout), and a second migration is never
    started while one runs.

    Reversion strategy: abort a migration job still running; destroy the paused
    incoming copy left on the destination while the VM runs on the source,
    after re-reading its state (any other copy there is kept). A host that cannot be asked is retried, then
    recorded as a leftover for reconcile, never taken as empty. A VM that
    already runs on the destination is left alone (the first task decides).
    """

    default_provides = "migration_result"

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str) -> dict[str, Any]:
        src_driver, src_uri = self.driver_and_uri(source_host)
        dst_driver, dst_uri = self.driver_and_uri(dest_host)
        reporter = _ProgressReporter(self, migration_id)
        options = self._options(migration_id, instance_uuid, dest_host, reporter)
        self.services.db.set_migration_status(migration_id, MigrationStatus.RUNNING)

        source = require_known(locate_on(self.services, source_host, instance_uuid, EXECUTE_PATIENCE_S))
        if source is not None and source.migration_job_active:
            self.note(migration_id, "a migration job of this VM is already running; following it")
            with self.services.db.reading() as session:
                options.phase = get_migration(session, migration_id).phase or options.phase
            followed = src_driver.wait_for_migration_job(src_uri, instance_uuid, options, reporter,
                                                         reporter.abort_requested, dest_uri=dst_uri)
            source = require_known(locate_on(self.services, source_host, instance_uuid, EXECUTE_PATIENCE_S))
            dest = require_known(locate_on(self.services, dest_host, instance_uuid, EXECUTE_PATIENCE_S))
            if followed is not None and dest is not None and dest.running and (source is None or not source.running):
                return self._finish(migration_id, followed, reporter)
        dest = require_known(locate_on(self.services, dest_host, instance_uuid, EXECUTE_PATIENCE_S))
        if dest is not None and dest.running and (source is None or not source.running):
            self.note(migration_id, f"the VM already runs on {dest_host}; not migrating again")
            return self._finish(migration_id, MigrationResult(downtime_ms=None, elapsed_ms=0))
        if source is None:
            where = f"a {dest.state.value} copy on {dest_host}" if dest is not None else f"not on {dest_host}"
            raise DomainLost(f"the VM is not on {source_host} ({where})")
        if not source.running:
            raise DomainNotRunning(f"the VM is {source.state.value} on {source_host}; a VM that is not running "
                                   f"is not migrated")
        if dest is not None:
            # A paused incoming copy from an earlier attempt blocks a new one;
            # any other copy is not ours to destroy.
            kept = self._destroy_incoming_copy(migration_id, instance_uuid, source_host, dest_host)
            if kept is not None:
                raise DestinationHoldsCopy(f"not migrating: {kept}")

        # Re-judged from the hosts' declared paths now, as the precheck and
        # create-disk-images-on-destination did.
        plan = storage_plan_for(self.services.db, source.disks, source_host, dest_host, options.copy_storage)
        options.shared_storage = needs_unsafe_flag(plan)
        options.destination.copy_disks = copied_targets(plan)
        fencing.ensure_current_claim(self.services.db, migration_id)  # right before starting the job
        result = src_driver.migrate(src_uri, dst_uri, instance_uuid, options, reporter, reporter.abort_requested)
        # A post-copy that outlived its destination's daemon (the stream went
        # on) finds the daemon just restarting: ask it for longer.
        patience = REVERT_HOST_WAIT_S if result.phase == POST_COPY else EXECUTE_PATIENCE_S
        after_src = require_known(locate_on(self.services, source_host, instance_uuid, EXECUTE_PATIENCE_S))
        after_dst = require_known(locate_on(self.services, dest_host, instance_uuid, patience))
        if after_dst is None or not after_dst.running:
            state = after_dst.state.value if after_dst else "absent"
            raise DriverError(f"the hypervisor reported success but the VM is not running on {dest_host} ({state})")
        if after_src is not None and after_src.running:
            raise DriverError(f"the VM still runs on {source_host} after migrating")
        return self._finish(migration_id, result, reporter)

    def _destroy_incoming_copy(self, migration_id: int, instance_uuid: str, source_host: str,
                               dest_host: str) -> str | None:
        """Destroy the VM's copy on `dest_host` if, read again just now, it is
        this migration's paused incoming copy; else say why it was kept.

        THIS migration's: the claim is still current (nobody took the
        migration over), the copy is a migration's incoming one (paused for
        migration, not yet defined), and no migration job on the source feeds
        it (one that runs is followed or aborted first, never cut short)."""
        fencing.ensure_current_claim(self.services.db, migration_id)
        sighting = locate_on(self.services, dest_host, instance_uuid, EXECUTE_PATIENCE_S)
        if sighting.presence is not Presence.PRESENT:
            return f"cannot tell what is on {dest_host} ({sighting.error})" \
                if sighting.presence is Presence.UNKNOWN else None
        if not sighting.domain.incoming:
            return (f"{dest_host} holds a {sighting.state} copy of the VM that is not an incoming migration; "
                    f"it is kept")
        source = locate_on(self.services, source_host, instance_uuid, EXECUTE_PATIENCE_S)
        if source.presence is Presence.UNKNOWN or (source.domain is not None and source.domain.migration_job_active):
            why = f"{source_host} cannot be asked" if source.presence is Presence.UNKNOWN else \
                f"a migration job on {source_host} still feeds it"
            return f"kept the incoming copy on {dest_host}: {why}"
        driver, uri = self.driver_and_uri(dest_host)
        driver.destroy_domain(uri, instance_uuid)
        self.note(migration_id, f"destroyed a stale {sighting.state} copy on {dest_host}")
        return None

    def _options(self, migration_id: int, instance_uuid: str, dest_host: str,
                 reporter: "_ProgressReporter") -> MigrationOptions:
        settings = self.services.settings  # with the migration's options that are settings
        chosen = self.services.options
        with self.services.db.reading() as session:
            instance = session.get(Instance, instance_uuid)
            memory_gib = max(instance.memory_mb / 1024.0, 0.0) if instance else 1.0
            # The destination's migration network as it is now (re-read on a
            # resumed run: an operator may have moved it meanwhile).
            dest = get_host(session, dest_host)
            destination = MigrationDestination(migration_address=dest.migration_address or "",
                                               tls_hostname=dest.migration_tls_name or "")
        timeout_s = chosen.timeout_s if chosen.timeout_s is not None else \
            max(settings.completion_timeout_min_s, settings.completion_timeout_s_per_gib * memory_gib)
        return MigrationOptions(
            max_downtime_ms=settings.max_downtime_ms, bandwidth_mib_s=settings.bandwidth_mib_s,
            timeout_s=timeout_s, poll_interval_s=settings.poll_interval_s, destination=destination,
            **{name: getattr(chosen, name) for name in DRIVER_POLICY_OPTIONS},
            downtime_schedule=downtime_schedule(settings.max_downtime_ms, settings.downtime_steps,
                                                settings.downtime_step_delay_s_per_gib * memory_gib),
            # A controller frozen mid-job wakes to find another owner: it
            # must not abort the job or change its downtime.
            before_job_change=lambda: fencing.ensure_current_claim(self.services.db, migration_id),
            force_complete_check=reporter.force_complete_requested, on_step=reporter.step)

    def _finish(self, migration_id: int, result: MigrationResult,
                reporter: _ProgressReporter | None = None) -> dict[str, Any]:
        downtime_ms, elapsed_ms = result.downtime_ms, result.elapsed_ms
        if reporter is not None:
            if result.final is not None:
                reporter.throttle.saw(result.final)
            reporter.throttle.finished()
        self.services.db.set_migration_status(migration_id, MigrationStatus.POST_MIGRATING, progress=1.0,
                                              downtime_ms=downtime_ms)
        if result.final is not None:
            # The last figures written while the job ran are up to half a
            # second old: the completed job's figures replace them.
            with self.services.db.session() as session:
                _write_figures(get_migration(session, migration_id), result.final)
        self.update_progress(1.0)
        self.note(migration_id, f"hypervisor migration call took {elapsed_ms} ms, downtime "
                                f"{'unknown' if downtime_ms is None else f'{downtime_ms} ms'}")
        return {"downtime_ms": downtime_ms, "elapsed_ms": elapsed_ms}

    @never_raises
    def revert(self, result: Any, migration_id: int, instance_uuid: str, source_host: str, dest_host: str,
               flow_failures: dict[str, Failure], **kwargs: Any) -> None:
        source = locate_on(self.services, source_host, instance_uuid, REVERT_HOST_WAIT_S)
        if source.domain is not None and source.domain.migration_job_active:
            # Outside the try: a stale controller stops here (never_raises
            # lets Fenced through) rather than aborting its successor's job.
            fencing.ensure_current_claim(self.services.db, migration_id)
            try:
                src_driver, src_uri = self.driver_and_uri(source_host)
                with_backoff(lambda: src_driver.abort_migration(src_uri, instance_uuid),
                             f"aborting the migration job of {instance_uuid}")
                self.note(migration_id, "aborted the migration job still running")
            except (StillFailing, LivemigError) as exc:
                record_leftover_for_reconcile(self.services, "migration-job", instance_uuid,
                                              f"could not abort the migration job: {exc}", source_host, migration_id)
            source = locate_on(self.services, source_host, instance_uuid, REVERT_HOST_WAIT_S)
        dest = locate_on(self.services, dest_host, instance_uuid, REVERT_HOST_WAIT_S)
        if dest.presence is Presence.UNKNOWN:
            # Unknown is not absent: a paused incoming copy may be left there.
            record_leftover_for_reconcile(self.services, "domain", instance_uuid,
                                          f"could not ask {dest_host} whether an incoming copy is left: {dest.error}",
                                          dest_host, migration_id)
            self.note(migration_id, f"could not inspect {dest_host} while reverting; recorded for reconcile",
                      "error")
            return
        if dest.presence is Presence.PRESENT and not dest.running:
            if source.running:
                try:
                    kept = self._destroy_incoming_copy(migration_id, instance_uuid, source_host, dest_host)
                    if kept is None:
                        return
                    self.note(migration_id, kept)
                except LivemigError as exc:
                    if isinstance(exc, fencing.Fenced):
                        raise
                    record_leftover_for_reconcile(self.services, "domain", instance_uuid,
                                                  f"could not destroy the orphaned {dest.state} copy: {exc}",
                                                  dest_host, migration_id)
            elif source.presence is Presence.UNKNOWN:
                record_leftover_for_reconcile(self.services, "domain", instance_uuid,
                                              f"a {dest.state} copy is left and {source_host} could not be asked "
                                              f"({source.error})", dest_host, migration_id)
        elif dest.running and not isinstance(result, Failure):
            self.note(migration_id, f"the VM already runs on {dest_host}; it is not moved back")


def _write_figures(migration: Any, progress: MigrationProgress) -> None:
    migration.progress = progress.fraction
    migration.memory_total = progress.memory_total
    migration.memory_processed = progress.memory_processed
    migration.memory_remaining = progress.memory_remaining
    migration.memory_bps = progress.memory_bps
    migration.iteration = progress.iteration
    migration.expected_downtime_ms = progress.expected_downtime_ms
    if progress.phase:
        migration.phase = progress.phase
    # Kept once seen: the completed job's figures may not repeat them.
    if progress.throttle_pct is not None:
        migration.throttle_pct = progress.throttle_pct
    if progress.postcopy_requests is not None:
        migration.postcopy_requests = progress.postcopy_requests


class _ThrottleTrail:
    """Puts auto-converge's throttle in the trail: when it starts, and the
    highest it reached (every poll is seen, not only the ones written)."""

    def __init__(self, task: MigrateDomain, migration_id: int):
        self.task = task
        self.migration_id = migration_id
        self.highest: int | None = None

    def saw(self, progress: MigrationProgress) -> None:
        throttle = progress.throttle_pct
        if throttle is None or (self.highest is not None and throttle <= self.highest):
            return
        if self.highest is None:
            self.task.note(self.migration_id, f"auto-converge started throttling the guest's vCPUs ({throttle} %, "
                                              f"pass {progress.iteration})")
        self.highest = throttle

    def finished(self) -> None:
        if self.highest is not None:
            self.task.note(self.migration_id, f"auto-converge throttled the guest's vCPUs up to {self.highest} %")


class _ProgressReporter:
    """Writes the hypervisor's figures to the migration row, a few times a second,
    and tells the driver when an operator asked to abort."""

    def __init__(self, task: MigrateDomain, migration_id: int):
        self.task = task
        self.migration_id = migration_id
        self._last_write = 0.0
        self._last_abort_check = 0.0
        self.throttle = _ThrottleTrail(task, migration_id)
        self._force_requested = False

    def __call__(self, progress: MigrationProgress) -> None:
        self.throttle.saw(progress)
        now = time.monotonic()
        # Both TaskFlow's progress and our row are database writes: a few a
        # second are plenty for an operator, more only slows the controller.
        if now - self._last_write < 0.5:
            return
        self._last_write = now
        self.task.update_progress(min(max(progress.fraction, 0.0), 1.0))
        try:
            with self.task.services.db.session() as session:
                _write_figures(get_migration(session, self.migration_id), progress)
        except LivemigError as exc:  # progress is best effort; the migration goes on
            LOG.warning("migration %s: could not record progress: %s", self.migration_id, exc)

    def abort_requested(self) -> bool:
        now = time.monotonic()
        if now - self._last_abort_check < 0.5:
            return False
        self._last_abort_check = now
        try:
            with self.task.services.db.reading() as session:
                migration = get_migration(session, self.migration_id)
                self._force_requested = bool(migration.force_complete_requested)
                return migration.abort_requested
        except LivemigError:
            return False

    def force_complete_requested(self) -> bool:
        """`migration force-complete` (read with the abort request, from
        the database: any controller may be the one that runs the job)."""
        return self._force_requested

    def step(self, action: str, message: str) -> None:
        """A convergence step the driver took: in the trail, and a switch of
        phase on the row at once (a revert must know that after the switch
        to post-copy the VM's home is the destination)."""
        LOG.info("migration %s: %s: %s", self.migration_id, self.task.name, message)
        phase = STEP_PHASES.get(action)
        with self.task.services.db.session() as session:
            if phase is not None:
                get_migration(session, self.migration_id).phase = phase
            add_event(session, self.migration_id, "note", self.task.name, action, message)
