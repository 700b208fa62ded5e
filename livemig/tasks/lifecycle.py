"""The first and last tasks of a migration: deciding the outcome of a failed
flow (roll back, or terminate what cannot be trusted), and completing it."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from taskflow.types.failure import Failure

from livemig.drivers.base import DomainInfo, MigrationAborted
from livemig.errors import LivemigError
from livemig.persistence.inventory import add_event, get_migration, set_migration_status
from livemig.persistence.models import Event, Instance
from livemig.states import DomainState, InstanceState, MigrationStatus, UnrecoverablePolicy
from livemig.tasks.base import LOG, MigrationTask

MIGRATE_STEP = "migrate-domain"


def describe_failures(flow_failures: dict[str, Failure]) -> str:
    parts = []
    for atom, failure in flow_failures.items():
        text = failure.exception_str or "unknown error"
        parts.append(f"{atom}: {text}")
    return "; ".join(parts) or "the flow was reverted"


class RollBackOrTerminateInstance(MigrationTask):
    """Does nothing; its revert (the last to run) decides the outcome.

    Reversion strategy: if the VM runs on exactly one host it stays there and
    the migration is `failed` (or `cancelled`); if it runs on none, on both, or
    crashed, apply the unrecoverable policy (terminate everywhere, or mark the
    instance `error`) and end the migration in `error`, with the reason.
    """

    def execute(self, migration_id: int) -> None:
        pass

    def revert(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str,
               flow_failures: dict[str, Failure], **kwargs: Any) -> None:
        reason = describe_failures(flow_failures)
        with self.services.db.session() as session:
            migration = get_migration(session, migration_id)
            if migration.status in (MigrationStatus.FAILED.value, MigrationStatus.CANCELLED.value,
                                    MigrationStatus.ERROR.value):
                return  # decided before a crash; a resumed revert must not decide twice
            abort_requested = migration.abort_requested
            migrate_started = session.scalar(sa.select(sa.func.count()).select_from(Event).where(
                Event.migration_id == migration_id, Event.kind == "step", Event.name == MIGRATE_STEP)) > 0
        cancelled = abort_requested and any(f.check(MigrationAborted) for f in flow_failures.values())
        located = {host: self._locate(host, instance_uuid) for host in (source_host, dest_host)}
        unknown = [h for h, d in located.items() if d is False]
        if unknown and not migrate_started:
            # The VM was never touched by this migration: it is where it was.
            self._end_recoverable(migration_id, instance_uuid, source_host, cancelled, reason)
            return
        running = [h for h, d in located.items() if isinstance(d, DomainInfo) and d.running]
        crashed = [h for h, d in located.items() if isinstance(d, DomainInfo) and d.state is DomainState.CRASHED]
        if len(running) == 1 and not crashed and not unknown:
            self._end_recoverable(migration_id, instance_uuid, running[0], cancelled, reason)
            return
        if unknown:
            why = f"cannot tell where the VM runs ({', '.join(unknown)} unreachable)"
        elif crashed:
            why = f"the VM crashed on {', '.join(crashed)}"
        elif running:
            why = f"the VM runs on both {source_host} and {dest_host}"
        else:
            why = "the VM runs on no host"
        self._end_unrecoverable(migration_id, instance_uuid, [source_host, dest_host], unknown,
                                f"{why}; {reason}")

    def _locate(self, host: str, instance_uuid: str) -> DomainInfo | None | bool:
        """The domain on a host, None if absent, False if the host cannot be asked."""
        try:
            return self.find_domain(host, instance_uuid)
        except LivemigError as exc:
            LOG.warning("cannot look up instance %s on %s: %s", instance_uuid, host, exc)
            return False

    def _end_recoverable(self, migration_id: int, instance_uuid: str, host: str, cancelled: bool,
                         reason: str) -> None:
        status = MigrationStatus.CANCELLED if cancelled else MigrationStatus.FAILED
        with self.services.db.session() as session:
            instance = session.get(Instance, instance_uuid)
            if instance is not None:
                instance.host = host
                instance.state = InstanceState.RUNNING.value
            set_migration_status(session, migration_id, status, f"{reason} (the VM keeps running on {host})")
        LOG.warning("migration %s %s: the VM keeps running on %s: %s", migration_id, status.value, host, reason,
                    extra={"migration_outcome": migration_id})

    def _end_unrecoverable(self, migration_id: int, instance_uuid: str, hosts: list[str], unknown: list[str],
                           reason: str) -> None:
        policy = UnrecoverablePolicy(self.services.settings.unrecoverable_policy)
        LOG.error("migration %s: unrecoverable: %s (policy %s)", migration_id, reason, policy.value,
                  extra={"migration_outcome": migration_id})
        if policy is UnrecoverablePolicy.TERMINATE and not unknown:
            for host in hosts:
                try:
                    driver, uri = self.driver_and_uri(host)
                    if driver.destroy_domain(uri, instance_uuid):
                        self.note(migration_id, f"terminated instance {instance_uuid} on {host}", "terminated")
                except LivemigError as exc:
                    self.note(migration_id, f"could not terminate instance on {host}: {exc}", "error")
            final_state, detail = InstanceState.DELETED, "instance terminated"
        else:
            # Terminating blind (a host we cannot ask) could kill the only copy.
            final_state, detail = InstanceState.ERROR, "instance left for forensics"
        with self.services.db.session() as session:
            instance = session.get(Instance, instance_uuid)
            if instance is not None:
                instance.state = final_state.value
                if final_state is InstanceState.DELETED:
                    instance.host = None
            add_event(session, migration_id, "note", self.name, final_state.value, detail)
            set_migration_status(session, migration_id, MigrationStatus.ERROR, f"{reason}; {detail}")


class MarkMigrationCompleted(MigrationTask):
    """Ends the migration as `completed`.

    Reversion strategy: none; it is the last step and has nothing after it.
    """

    def execute(self, migration_id: int) -> None:
        self.services.db.set_migration_status(migration_id, MigrationStatus.COMPLETED, progress=1.0)
