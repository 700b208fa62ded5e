"""The first and last tasks of a migration: deciding the outcome of a failed
flow (roll back, or terminate what cannot be trusted), and completing it."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from taskflow.types.failure import Failure

from livemig import fencing
from livemig.drivers.base import MigrationAborted
from livemig.drivers.convergence import POST_COPY
from livemig.errors import LivemigError, MigrationFailed
from livemig.locator import Presence, Sighting, locate, locate_elsewhere, locate_on
from livemig.persistence.inventory import add_event, get_migration, set_migration_status
from livemig.persistence.models import Event, Instance
from livemig.states import INSTANCE_STATE_OF_DOMAIN, DomainState, InstanceState, MigrationStatus, UnrecoverablePolicy
from livemig.tasks.base import LOG, MigrationTask
from livemig.tasks.undo import StillFailing, record_leftover_for_reconcile, with_backoff

MIGRATE_STEP = "migrate-domain"


def describe_failures(flow_failures: dict[str, Failure]) -> str:
    parts = []
    for atom, failure in flow_failures.items():
        text = failure.exception_str or "unknown error"
        parts.append(f"{atom}: {text}")
    return "; ".join(parts) or "the flow was reverted"


class MigrationCancelled(MigrationFailed):
    """An operator aborted the migration before the VM was touched (while queued)."""


# How long the outcome's writes are retried: the outcome is the one thing a
# reverted migration must end with.
DECIDE_PATIENCE_S = 120.0


class RollBackOrTerminateInstance(MigrationTask):
    """Does nothing; its revert (the last to run) decides the outcome.

    Reversion strategy: if the VM is on exactly one host, in any state short
    of crashed (running, paused, suspended, migrating in), it stays there and
    the migration is `failed` (or `cancelled`), the reason saying its state;
    a VM on neither host but on exactly one other is recorded there (its
    inventory follows, with a note); if it runs on two hosts at once or on
    none, apply the unrecoverable policy (terminate, or mark the instance
    `error`); when a host cannot be asked, or the copies cannot be told
    apart, nothing is terminated: the instance is marked `error` and recorded
    for reconcile. The outcome's writes are retried: this revert always
    decides.
    """

    def execute(self, migration_id: int) -> None:
        pass

    def revert(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str,
               flow_failures: dict[str, Failure], **kwargs: Any) -> None:
        try:
            with_backoff(lambda: self._decide(migration_id, instance_uuid, source_host, dest_host, flow_failures),
                         f"deciding the outcome of migration {migration_id}", DECIDE_PATIENCE_S)
        except StillFailing as exc:
            # Raising here stops nothing (this is the last revert), and makes
            # the flow's failure visible: the migration stays unfinished in
            # the database for `livemig reconcile`.
            LOG.error("migration %s: could not record its outcome: %s", migration_id, exc)
            raise exc.cause from exc

    def _decide(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str,
                flow_failures: dict[str, Failure]) -> None:
        from livemig.tasks.attempts import attempts_reason

        reason = describe_failures(flow_failures)
        with self.services.db.session() as session:
            migration = get_migration(session, migration_id)
            if migration.status in (MigrationStatus.FAILED.value, MigrationStatus.CANCELLED.value,
                                    MigrationStatus.ERROR.value):
                return  # decided before a crash; a resumed revert must not decide twice
            abort_requested = migration.abort_requested
            # The current attempt's destination (the store's is the first):
            # earlier attempts' hosts were cleared before the next was tried.
            dest_host = migration.dest_host
            reason = attempts_reason(list(migration.attempts or []), reason)
            # After the switch to post-copy the VM's home is the destination:
            # the source holds only pages of it, and never runs it again.
            switched = migration.phase == POST_COPY
            migrate_started = session.scalar(sa.select(sa.func.count()).select_from(Event).where(
                Event.migration_id == migration_id, Event.kind == "step", Event.name == MIGRATE_STEP)) > 0
        cancelled = abort_requested and any(f.check(MigrationAborted, MigrationCancelled)
                                            for f in flow_failures.values())
        location = locate(self.services, instance_uuid, (source_host, dest_host))
        unknown = location.unknown
        if unknown and not migrate_started:
            # The VM was never touched by this migration: it is where it was.
            self._end_recoverable(migration_id, instance_uuid, source_host, None, cancelled, reason)
            return
        running, present, crashed = location.running, location.present, location.crashed
        home: str | None = None
        if not unknown and not crashed:
            if len(running) == 1:
                home = running[0]
            elif not running and len(present) == 1:
                home = present[0]
            elif not running and len(present) == 2:
                # Two stopped copies: the one that is not a migration's
                # incoming copy is the VM.
                own = [h for h in present if not location.on(h).domain.incoming]
                home = own[0] if len(own) == 1 else None
        if home is not None and switched and home == source_host and not location.on(home).running:
            self._end_unrecoverable(migration_id, instance_uuid, [source_host, dest_host], True,
                                    f"the migration switched to post-copy and {dest_host} lost the VM (the source "
                                    f"holds only part of its memory, {location.on(home).state}); {reason}")
            return
        if home is not None:
            self._end_recoverable(migration_id, instance_uuid, home, location.on(home), cancelled, reason)
            return
        terminate = False
        if unknown:
            why = f"cannot tell where the VM runs ({location.describe()})"
            for host in unknown:
                record_leftover_for_reconcile(self.services, "instance", instance_uuid,
                                              f"could not ask {host} where the VM is", host, migration_id)
        elif crashed:
            why, terminate = f"the VM crashed on {', '.join(crashed)}", True
        elif len(running) == 2:
            why, terminate = f"the VM runs on both {source_host} and {dest_host}", True
        elif not present:
            elsewhere = locate_elsewhere(self.services, instance_uuid, (source_host, dest_host))
            if len(elsewhere.present) == 1 and not elsewhere.unknown and not elsewhere.crashed:
                third = elsewhere.present[0]
                self._end_recoverable(migration_id, instance_uuid, third, elsewhere.on(third), cancelled, reason,
                                      note=f"the VM is {elsewhere.on(third).state} on {third}, neither the source "
                                           f"nor the destination; the inventory follows it there")
                return
            if elsewhere.present or elsewhere.unknown:
                # Terminating would destroy nothing on these two hosts and
                # record a VM that still exists (or may) as deleted.
                why = f"the VM is on neither {source_host} nor {dest_host} ({elsewhere.describe()})"
                for host in elsewhere.unknown:
                    record_leftover_for_reconcile(self.services, "instance", instance_uuid,
                                                  f"could not ask {host} where the VM is", host, migration_id)
            else:
                why, terminate = "the VM runs on no host", True
        else:
            why = f"cannot tell which copy is the VM ({location.describe()})"
        self._end_unrecoverable(migration_id, instance_uuid, [source_host, dest_host], terminate,
                                f"{why}; {reason}")

    def _end_recoverable(self, migration_id: int, instance_uuid: str, host: str, sighting: Sighting | None,
                         cancelled: bool, reason: str, note: str | None = None) -> None:
        status = MigrationStatus.CANCELLED if cancelled else MigrationStatus.FAILED
        state = sighting.domain.state if sighting is not None and sighting.domain is not None else DomainState.RUNNING
        where = (f"the VM keeps running on {host}" if state is DomainState.RUNNING
                 else f"the VM stays {sighting.state} on {host}")
        with self.services.db.session() as session:
            instance = session.get(Instance, instance_uuid)
            if instance is not None:
                instance.host = host
                instance.state = INSTANCE_STATE_OF_DOMAIN.get(state, InstanceState.ERROR).value
            if note:
                add_event(session, migration_id, "note", self.name, "", note)
            set_migration_status(session, migration_id, status, f"{reason} ({where})")
        LOG.warning("migration %s %s: %s: %s", migration_id, status.value, where, reason,
                    extra={"migration_outcome": migration_id})

    def _end_unrecoverable(self, migration_id: int, instance_uuid: str, hosts: list[str], terminate: bool,
                           reason: str) -> None:
        policy = UnrecoverablePolicy(self.services.settings.unrecoverable_policy)
        LOG.error("migration %s: unrecoverable: %s (policy %s)", migration_id, reason, policy.value,
                  extra={"migration_outcome": migration_id})
        if policy is UnrecoverablePolicy.TERMINATE and terminate:
            for host in hosts:
                try:
                    fencing.ensure_current_claim(self.services.db, migration_id)
                    # Look again right before destroying: the world may have
                    # moved since the decision.
                    if locate_on(self.services, host, instance_uuid).presence is not Presence.PRESENT:
                        continue
                    driver, uri = self.driver_and_uri(host)
                    if driver.destroy_domain(uri, instance_uuid):
                        self.note(migration_id, f"terminated instance {instance_uuid} on {host}", "terminated")
                except fencing.Fenced:
                    raise
                except LivemigError as exc:
                    self.note(migration_id, f"could not terminate instance on {host}: {exc}", "error")
            final_state, detail = InstanceState.DELETED, "instance terminated"
        else:
            # Terminating blind (a host we cannot ask, copies we cannot tell
            # apart) could kill the only copy.
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
        from livemig.tasks.attempts import COMPLETED, close_attempt

        self.services.db.set_migration_status(migration_id, MigrationStatus.COMPLETED, progress=1.0)
        try:
            close_attempt(self.services, migration_id, COMPLETED, None, self.name)
        except fencing.Fenced:
            raise
        except Exception as exc:  # noqa: BLE001 - bookkeeping; the outcome above is what counts
            LOG.warning("migration %s: could not close its last attempt: %s", migration_id, exc)
