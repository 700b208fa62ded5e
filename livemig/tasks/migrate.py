"""The live migration itself."""
from __future__ import annotations

import time
from typing import Any

from taskflow.types.failure import Failure

from livemig.disk_sharing import unsafe_flag_for
from livemig.drivers.base import DriverError, MigrationOptions, MigrationProgress, downtime_schedule
from livemig.errors import LivemigError
from livemig.persistence.inventory import get_migration
from livemig.persistence.models import Instance
from livemig.states import MigrationStatus
from livemig.tasks.base import LOG, MigrationTask


REVERT_HOST_WAIT_S = 20.0


class DomainLost(DriverError):
    """The VM runs on neither host: nothing to migrate, nothing to roll back to."""


class MigrateDomain(MigrationTask):
    """Live-migrates the VM and verifies it runs on the destination only.

    Re-executed after a crash it looks first: a VM already on the destination
    is done, a migration job still running on the source is waited for, and a
    second migration is never started while one runs.

    Reversion strategy: abort a job still running; destroy a paused incoming
    copy left on the destination while the VM runs on the source. A VM that
    already runs on the destination is left alone (the first task decides).
    """

    default_provides = "migration_result"

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str) -> dict[str, Any]:
        src_driver, src_uri = self.driver_and_uri(source_host)
        dst_driver, dst_uri = self.driver_and_uri(dest_host)
        options = self._options(instance_uuid)
        self.services.db.set_migration_status(migration_id, MigrationStatus.RUNNING)
        reporter = _ProgressReporter(self, migration_id)

        source = src_driver.find_domain(src_uri, instance_uuid)
        if source is not None and source.migration_job_active:
            self.note(migration_id, "a migration job of this VM is already running; following it")
            src_driver.wait_for_migration_job(src_uri, instance_uuid, options, reporter, reporter.abort_requested)
            source = src_driver.find_domain(src_uri, instance_uuid)
        dest = dst_driver.find_domain(dst_uri, instance_uuid)
        if dest is not None and dest.running and (source is None or not source.running):
            self.note(migration_id, f"the VM already runs on {dest_host}; not migrating again")
            return self._finish(migration_id, None, 0)
        if source is None or not source.running:
            state = source.state.value if source else "absent"
            raise DomainLost(f"the VM is not running on {source_host} ({state}) nor on {dest_host}")
        if dest is not None:
            # A paused incoming copy from an earlier attempt blocks a new one.
            self.note(migration_id, f"destroying a stale {dest.state.value} copy on {dest_host}")
            dst_driver.destroy_domain(dst_uri, instance_uuid)

        options.shared_storage = unsafe_flag_for(self.services.db, source.disks, source_host, dest_host)
        result = src_driver.migrate(src_uri, dst_uri, instance_uuid, options, reporter, reporter.abort_requested)
        after_src = src_driver.find_domain(src_uri, instance_uuid)
        after_dst = dst_driver.find_domain(dst_uri, instance_uuid)
        if after_dst is None or not after_dst.running:
            raise DriverError(f"the hypervisor reported success but the VM is not running on {dest_host}")
        if after_src is not None and after_src.running:
            raise DriverError(f"the VM still runs on {source_host} after migrating")
        return self._finish(migration_id, result.downtime_ms, result.elapsed_ms)

    def _options(self, instance_uuid: str) -> MigrationOptions:
        settings = self.services.settings
        with self.services.db.reading() as session:
            instance = session.get(Instance, instance_uuid)
            memory_gib = max(instance.memory_mb / 1024.0, 0.0) if instance else 1.0
        return MigrationOptions(
            max_downtime_ms=settings.max_downtime_ms, bandwidth_mib_s=settings.bandwidth_mib_s,
            timeout_s=max(settings.completion_timeout_min_s, settings.completion_timeout_s_per_gib * memory_gib),
            poll_interval_s=settings.poll_interval_s,
            downtime_schedule=downtime_schedule(settings.max_downtime_ms, settings.downtime_steps,
                                                settings.downtime_step_delay_s_per_gib * memory_gib))

    def _finish(self, migration_id: int, downtime_ms: int | None, elapsed_ms: int) -> dict[str, Any]:
        self.services.db.set_migration_status(migration_id, MigrationStatus.POST_MIGRATING, progress=1.0,
                                              downtime_ms=downtime_ms)
        self.update_progress(1.0)
        self.note(migration_id, f"hypervisor migration call took {elapsed_ms} ms, downtime "
                                f"{'unknown' if downtime_ms is None else f'{downtime_ms} ms'}")
        return {"downtime_ms": downtime_ms, "elapsed_ms": elapsed_ms}

    def revert(self, result: Any, migration_id: int, instance_uuid: str, source_host: str, dest_host: str,
               flow_failures: dict[str, Failure], **kwargs: Any) -> None:
        # A destination whose daemon just died is often back within seconds
        # (restarted by its supervisor); the orphan it holds must not be missed.
        deadline = time.monotonic() + REVERT_HOST_WAIT_S
        while True:
            try:
                src_driver, src_uri = self.driver_and_uri(source_host)
                dst_driver, dst_uri = self.driver_and_uri(dest_host)
                source = src_driver.find_domain(src_uri, instance_uuid)
                if source is not None and source.migration_job_active:
                    src_driver.abort_migration(src_uri, instance_uuid)
                    self.note(migration_id, "aborted the migration job still running")
                    source = src_driver.find_domain(src_uri, instance_uuid)
                dest = dst_driver.find_domain(dst_uri, instance_uuid)
                break
            except LivemigError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                self.note(migration_id, f"could not inspect the hosts while reverting (a paused copy may be left "
                                        f"on {dest_host}): {exc}", "error")
                return
        if dest is not None and not dest.running and source is not None and source.running:
            try:
                dst_driver.destroy_domain(dst_uri, instance_uuid)
                self.note(migration_id, f"destroyed the orphaned {dest.state.value} copy on {dest_host}")
            except LivemigError as exc:
                self.note(migration_id, f"could not destroy the orphaned copy on {dest_host}: {exc}", "error")
        elif dest is not None and dest.running and not isinstance(result, Failure):
            self.note(migration_id, f"the VM already runs on {dest_host}; it is not moved back")


class _ProgressReporter:
    """Writes the hypervisor's figures to the migration row, a few times a second,
    and tells the driver when an operator asked to abort."""

    def __init__(self, task: MigrateDomain, migration_id: int):
        self.task = task
        self.migration_id = migration_id
        self._last_write = 0.0
        self._last_abort_check = 0.0

    def __call__(self, progress: MigrationProgress) -> None:
        now = time.monotonic()
        # Both TaskFlow's progress and our row are database writes: a few a
        # second are plenty for an operator, more only slows the controller.
        if now - self._last_write < 0.5:
            return
        self._last_write = now
        self.task.update_progress(min(max(progress.fraction, 0.0), 1.0))
        try:
            with self.task.services.db.session() as session:
                m = get_migration(session, self.migration_id)
                m.progress = progress.fraction
                m.memory_total = progress.memory_total
                m.memory_processed = progress.memory_processed
                m.memory_remaining = progress.memory_remaining
                m.memory_bps = progress.memory_bps
                m.iteration = progress.iteration
                m.expected_downtime_ms = progress.expected_downtime_ms
        except LivemigError as exc:  # progress is best effort; the migration goes on
            LOG.warning("migration %s: could not record progress: %s", self.migration_id, exc)

    def abort_requested(self) -> bool:
        now = time.monotonic()
        if now - self._last_abort_check < 0.5:
            return False
        self._last_abort_check = now
        try:
            with self.task.services.db.reading() as session:
                return get_migration(session, self.migration_id).abort_requested
        except LivemigError:
            return False
