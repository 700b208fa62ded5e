"""Trying destinations one after another: the task that names each attempt's
destination (from the database, never from the retry controller's history,
which TaskFlow 6.5 loses when it loads a flow back from the database), and
the retry controller that decides whether a failed attempt may be tried
again on another host.

An attempt is one dict in Migration.attempts: {"attempt": n, "host": ...,
"outcome": "running" | "failed" | "completed", "reason": ..., "at": ...};
Migration.dest_host always names the current attempt's host."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from taskflow import retry
from taskflow.types.failure import Failure

from livemig import fencing
from livemig.drivers.base import MigrationAborted, MigrationTimedOut
from livemig.errors import PrecheckFailed, QueueTimeout
from livemig.locator import locate
from livemig.persistence.inventory import event_row, get_migration, insert_events
from livemig.persistence.models import Migration, utcnow
from livemig.scheduler.inventory import snapshot
from livemig.scheduler.select import choose_with_slots, select
from livemig.services import Services
from livemig.states import MigrationStatus
from livemig.tasks.base import LOG, MigrationTask
from livemig.tasks.lifecycle import MigrationCancelled, describe_failures
from livemig.tasks.undo import never_raises, with_backoff

RUNNING, FAILED, COMPLETED = "running", "failed", "completed"


class NoDestinationLeft(PrecheckFailed):
    """Every other host was tried or refused: nothing more to try."""


class DestinationRefused(PrecheckFailed):
    """The scheduler no longer accepts this attempt's destination."""


class RetryUnsafe(PrecheckFailed):
    """The VM is not (only) on its source: trying another host could leave it on two."""


def _read(services: Services, migration_id: int) -> tuple[list[dict[str, Any]], bool, str]:
    with services.db.reading() as session:
        migration = get_migration(session, migration_id)
        return [dict(a) for a in migration.attempts or []], migration.scheduled, migration.status


def _write_attempts(services: Services, migration_id: int, attempts: list[dict[str, Any]], dest: str | None,
                    note: tuple[str, str, str]) -> None:
    """The attempts (and the current destination), with an audit event, in one
    fenced transaction: a stale controller changes nothing."""
    table = Migration.__table__
    values: dict[str, Any] = {"attempts": attempts}
    if dest is not None:
        values["dest_host"] = dest
    with services.db.transaction() as conn:
        conn.execute(sa.update(table).where(table.c.id == migration_id).values(**values))
        insert_events(conn, event_row(migration_id, "note", *note))


def close_attempt(services: Services, migration_id: int, outcome: str, reason: str | None, name: str) -> None:
    """Ends the current attempt (if one is running) with `outcome`."""
    attempts, _scheduled, _status = _read(services, migration_id)
    if not attempts or attempts[-1].get("outcome") != RUNNING:
        return
    attempts[-1].update(outcome=outcome, reason=reason, ended_at=utcnow().isoformat())
    host = attempts[-1]["host"]
    message = f"attempt {attempts[-1]['attempt']} on {host} {outcome}" + (f": {reason}" if reason else "")
    _write_attempts(services, migration_id, attempts, None, (name, outcome, message))


def attempts_reason(attempts: list[dict[str, Any]], last_failure: str) -> str:
    """A failed migration's reason when it tried more than one host: every
    attempt's, then the last failure if no attempt has it yet."""
    if len(attempts) < 2:
        return last_failure
    parts = [f"attempt {a.get('attempt')} on {a.get('host')}: {a.get('reason') or a.get('outcome')}"
             for a in attempts]
    if attempts[-1].get("reason") != last_failure:
        parts.append(f"then {last_failure}")
    return "; ".join(parts)


class ChooseDestination(MigrationTask):
    """Names this attempt's destination: the requested one first; after a
    failed attempt of a migration whose destination livemig chose, the
    scheduler's best host among those not tried yet. Re-executed after a
    crash it returns the attempt already running.

    Reversion strategy: record the attempt as failed, with the reason (the
    failures of the flow), so that the next attempt excludes its host.
    """

    default_provides = "attempt_dest_host"

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str,
                candidate_hosts: list[str] | None = None) -> str:
        attempts, scheduled, _status = _read(self.services, migration_id)
        if attempts and attempts[-1].get("outcome") == RUNNING:
            return attempts[-1]["host"]  # re-run after a crash: the same attempt goes on
        settings = self.services.settings
        number = len(attempts) + 1
        tried = [a["host"] for a in attempts]
        if attempts:
            with self.services.db.reading() as session:
                if get_migration(session, migration_id).abort_requested:
                    # Asked while the last attempt was undone: no new one starts.
                    raise MigrationCancelled(f"migration {migration_id} was cancelled after attempt {len(attempts)}")
        if not attempts:
            host, how = dest_host, "the requested destination"
            if scheduled:
                # Chosen when requested, maybe long ago (a queued job): the
                # scheduler must still accept it (maintenance, room, groups).
                with self.services.db.reading() as session:
                    snap = snapshot(session, exclude_migration=migration_id)
                verdict = select(snap, instance_uuid, candidates=[host], weigher=settings.weigher,
                                 ignore_slots=True, copy_storage=self.services.options.copy_storage)
                if verdict.chosen is None:
                    reason = "; ".join(verdict.explain())
                    self._start(migration_id, attempts, number, host, f"attempt {number}: {host} ({how})")
                    raise DestinationRefused(f"the scheduler no longer accepts {reason}")
                how = f"chosen by the scheduler ({settings.weigher})"
        else:
            if not scheduled:
                raise NoDestinationLeft("the destination was given explicitly: no other host is tried")
            self._check_intact(instance_uuid, source_host, tried)
            with self.services.db.reading() as session:
                snap = snapshot(session, exclude_migration=migration_id)
            selection = choose_with_slots(snap, instance_uuid, settings.weigher, exclude=tried,
                                          candidates=candidate_hosts,
                                          copy_storage=self.services.options.copy_storage)
            if selection.chosen is None:
                raise NoDestinationLeft(f"no other host can take it: {'; '.join(selection.explain())}")
            host = selection.chosen
            how = f"the next best after {', '.join(tried)} ({settings.weigher})"
        self._start(migration_id, attempts, number, host, f"attempt {number}: {host} ({how})")
        return host

    def _start(self, migration_id: int, attempts: list[dict[str, Any]], number: int, host: str,
               message: str) -> None:
        attempts.append({"attempt": number, "host": host, "outcome": RUNNING, "reason": None,
                         "at": utcnow().isoformat()})
        _write_attempts(self.services, migration_id, attempts, host, (self.name, RUNNING, message))
        LOG.info("migration %s: %s", migration_id, message)

    def _check_intact(self, instance_uuid: str, source_host: str, tried: list[str]) -> None:
        """The VM runs on its source and on no host tried before (their reverts
        removed any incoming copy): only then is another host tried."""
        location = locate(self.services, instance_uuid, [source_host, *dict.fromkeys(tried)])
        if location.unknown:
            raise RetryUnsafe(f"not trying another host: cannot tell where the VM is ({location.describe()})")
        elsewhere = [h for h in location.present if h != source_host]
        if location.running != [source_host] or elsewhere:
            raise RetryUnsafe(f"not trying another host: the VM is not only on {source_host} "
                              f"({location.describe()})")

    @never_raises
    def revert(self, result: Any, migration_id: int, flow_failures: dict[str, Failure], **kwargs: Any) -> None:
        reason = describe_failures(flow_failures)
        with_backoff(lambda: close_attempt(self.services, migration_id, FAILED, reason, self.name),
                     f"recording the failed attempt of migration {migration_id}")


class RetryOnNextDestination(retry.Retry):
    """After a failed attempt, decides: RETRY on the next host, or REVERT_ALL
    (the whole migration is rolled back and its outcome decided).

    Retried only if livemig chose the destination, no abort was asked, the
    failure is one a destination can cause (not a timeout, an abort, a lost
    claim or a queue timeout), it came before switchover (the migration never reached
    post-migrating), the VM runs on its source and on no other host asked,
    and fewer than 1 + max_retries attempts were made. Everything it reads
    comes from the database and the hypervisors, not from `history`."""

    def __init__(self, services: Services, name: str | None = None, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.services = services

    def execute(self, history: Any, migration_id: int, instance_uuid: str, source_host: str) -> int:
        # on_failure is given the same arguments as execute.
        return len(history) + 1

    def on_failure(self, history: Any, migration_id: int, instance_uuid: str, source_host: str) -> str:
        decision, why = self._decide(history, migration_id, instance_uuid, source_host)
        LOG.info("migration %s: %s: %s", migration_id, "retrying on another host" if decision == retry.RETRY
                 else "not retrying", why)
        if decision != retry.RETRY:
            try:
                self.services.db.record_event(migration_id, "note", self.name, "give-up", f"not retried: {why}")
            except Exception as exc:  # noqa: BLE001 - the trail is best effort here; the outcome is not
                LOG.warning("migration %s: could not note the retry decision: %s", migration_id, exc)
        return decision

    def _decide(self, history: Any, migration_id: int, instance_uuid: str, source_host: str) -> tuple[str, str]:
        try:
            attempts, scheduled, status = _read(self.services, migration_id)
            with self.services.db.reading() as session:
                migration = get_migration(session, migration_id)
                abort_requested, dest = migration.abort_requested, migration.dest_host
                switched = migration.phase == "post-copy"
        except Exception as exc:  # noqa: BLE001 - unknown is never a reason to try again
            return retry.REVERT_ALL, f"cannot read the migration ({exc})"
        failures = _latest_failures(history)
        if not scheduled:
            return retry.REVERT_ALL, "the destination was given explicitly"
        if abort_requested:
            return retry.REVERT_ALL, "an abort was requested"
        if switched:
            return retry.REVERT_ALL, "the migration switched to post-copy: the VM's home is the destination"
        # Not the destination's fault: a lost claim, nothing left to try, an
        # abort (ours or anybody's), a queue timeout (the operator's budget),
        # a guest that did not converge in time (it would not elsewhere).
        if any(f.check(fencing.Fenced, NoDestinationLeft, RetryUnsafe, MigrationCancelled, QueueTimeout,
                       MigrationAborted, MigrationTimedOut) for f in failures):
            return retry.REVERT_ALL, "; ".join(f.exception_str for f in failures)
        if status not in (MigrationStatus.QUEUED.value, MigrationStatus.PREPARING.value,
                          MigrationStatus.RUNNING.value):
            return retry.REVERT_ALL, f"the migration is {status}: past switchover, it is never retried"
        made = max(len(attempts), len(history))
        limit = 1 + self.services.settings.max_retries
        if made >= limit:
            return retry.REVERT_ALL, f"{made} attempts made (max_retries {self.services.settings.max_retries})"
        location = locate(self.services, instance_uuid, [source_host, dest])
        if location.unknown or location.running != [source_host]:
            return retry.REVERT_ALL, f"the VM is not intact on {source_host} ({location.describe()})"
        return retry.RETRY, f"attempt {made} on {dest} failed before switchover; {made} of {limit} made"


def _latest_failures(history: Any) -> list[Failure]:
    """The failures of the attempt that just failed, as far as the history
    still has them (after a load from the database it may have none)."""
    try:
        if len(history) == 0:
            return []
        _result, failures = history[-1]
        return [f for f in failures.values() if isinstance(f, Failure)]
    except Exception:  # noqa: BLE001 - a lost history only loses this shortcut
        return []
