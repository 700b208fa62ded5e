"""Reserving the source and destination hosts for one migration."""
from __future__ import annotations

import time
from typing import Any

from livemig import fencing
from livemig.coordination.base import HostLimit
from livemig.errors import QueueTimeout
from livemig.persistence.inventory import get_hosts, get_migration
from livemig.states import MigrationStatus
from livemig.tasks.base import MigrationTask
from livemig.tasks.lifecycle import MigrationCancelled
from livemig.tasks.undo import StillFailing, never_raises, record_leftover_for_reconcile, with_backoff


class ReserveHosts(MigrationTask):
    """Holds both hosts (within their concurrency limits) and the instance,
    waiting in `queued` up to the queue timeout.

    Reversion strategy: release this migration's reservations (idempotent),
    only while this controller's claim is current, retrying a ZooKeeper or
    database error; reservations that still cannot be released are recorded
    as leftovers for reconcile.
    """

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str,
                queue_timeout_s: float | None = None) -> None:
        with self.services.db.reading() as session:
            hosts = get_hosts(session, source_host, dest_host)
            limits = [HostLimit(h.name, h.max_concurrent_migrations) for h in hosts]
        # The request may carry its own timeout (0 for --no-queue).
        queue_timeout = self.services.settings.queue_timeout_s if queue_timeout_s is None else queue_timeout_s
        deadline = time.monotonic() + queue_timeout
        noted = False
        while True:
            if not self.services.reservations.fenced_by_claim:
                # A controller frozen while it waited here, and woken after
                # another took the migration over (perhaps to another
                # destination), must not reserve a host: nothing else
                # would ever release a znode the new owner does not know of.
                fencing.ensure_current_claim(self.services.db, migration_id)
            why = self.services.reservations.try_reserve(migration_id, instance_uuid, limits)
            if why is None:
                return
            if not noted:
                self.note(migration_id, f"waiting for hosts: {why}", "queued")
                noted = True
            with self.services.db.reading() as session:
                if get_migration(session, migration_id).abort_requested:
                    raise MigrationCancelled(f"migration {migration_id} was cancelled while queued")
            if time.monotonic() >= deadline:
                raise QueueTimeout(f"gave up waiting for hosts after {queue_timeout:g} s: {why}")
            self.services.reservations.wait_for_change(instance_uuid, [source_host, dest_host],
                                                       self.services.settings.poll_interval_s)

    @never_raises
    def revert(self, migration_id: int, source_host: str, dest_host: str, **kwargs: Any) -> None:
        hosts = [source_host, dest_host]

        def release() -> None:
            # The reservations are the migration's, not this controller's: a
            # stale one (frozen while another claimed the migration) would
            # free hosts the new owner holds for it.
            fencing.ensure_current_claim(self.services.db, migration_id)
            self.services.reservations.release(migration_id, hosts)

        try:
            with_backoff(release, f"releasing the hosts of migration {migration_id}")
        except StillFailing as exc:
            for host in hosts:
                record_leftover_for_reconcile(self.services, "reservation", str(migration_id),
                                              f"could not release the reservation: {exc.cause}", host, migration_id)


class ReleaseHosts(MigrationTask):
    """Releases this migration's host reservations once the VM has moved.

    Reversion strategy: nothing to undo (ReserveHosts' revert releases anyway).
    """

    def execute(self, migration_id: int, source_host: str, dest_host: str) -> None:
        self.services.reservations.release(migration_id, [source_host, dest_host])


class MarkMigrationPreparing(MigrationTask):
    """Moves the migration from `queued` to `preparing`.

    Reversion strategy: none needed; the first task's revert sets the outcome.
    """

    def execute(self, migration_id: int) -> None:
        self.services.db.set_migration_status(migration_id, MigrationStatus.PREPARING)
