"""What every revert shares: retry transient errors with bounded backoff,
record for `livemig reconcile` what still cannot be undone, never raise.

TaskFlow stops the whole revert chain at the first revert that raises, so the
first task never decides the migration's outcome and every earlier step's
undo (the host reservations among them) is skipped: a revert that raises
leaves hosts blocked for good."""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, TypeVar

import sqlalchemy as sa

from livemig.errors import ServiceUnavailable
from livemig.fencing import Fenced
from livemig.persistence.inventory import record_leftover
from livemig.tasks.base import LOG

T = TypeVar("T")

# How long a revert keeps retrying one transient failure (a ZooKeeper or
# database blip, a host daemon restarting) before it records a leftover.
REVERT_PATIENCE_S = 30.0
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0

# Errors that may go away by themselves: a service that did not answer.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ServiceUnavailable, sa.exc.OperationalError)


class StillFailing(Exception):
    """A transient error outlasted the retries; `cause` is the last one."""

    def __init__(self, what: str, cause: BaseException):
        super().__init__(f"{what}: {cause}")
        self.cause = cause


def with_backoff(fn: Callable[[], T], what: str, patience_s: float | None = None) -> T:
    """fn(), retried with exponential backoff while it raises a transient
    error, for at most `patience_s` (REVERT_PATIENCE_S by default); then
    StillFailing. Other errors are raised at once."""
    deadline = time.monotonic() + (REVERT_PATIENCE_S if patience_s is None else patience_s)
    delay = FIRST_DELAY_S
    attempt = 1
    while True:
        try:
            return fn()
        except TRANSIENT_ERRORS as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StillFailing(what, exc) from exc
            LOG.warning("%s failed (attempt %d, retrying): %s", what, attempt, exc)
            time.sleep(min(delay, left))
            delay = min(delay * 2, MAX_DELAY_S)
            attempt += 1


def record_leftover_for_reconcile(services: Any, kind: str, name: str, reason: str, host: str | None = None,
                                  migration_id: int | None = None) -> bool:
    """Record a Leftover (retried like any revert write); False, having
    logged everything reconcile would need, if even that cannot be written."""
    def write() -> None:
        with services.db.session() as session:
            record_leftover(session, kind, name, reason, host=host, migration_id=migration_id)

    try:
        with_backoff(write, f"recording leftover {kind} {name}")
        LOG.warning("migration %s: left %s %s on %s for reconcile: %s", migration_id, kind, name, host, reason)
        return True
    except Exception as exc:  # noqa: BLE001 - the log line is the last record left
        LOG.error("migration %s: LEFTOVER NOT RECORDED (%s): %s %s on %s: %s", migration_id, exc, kind, name,
                  host, reason)
        return False


def never_raises(revert: Callable[..., None]) -> Callable[..., None]:
    """A revert that logs what escaped it instead of stopping TaskFlow's revert
    chain. Fenced still propagates: a stale controller must stop undoing things
    that the migration's new owner now decides."""
    @functools.wraps(revert)
    def guarded(self, *args: Any, **kwargs: Any) -> None:
        try:
            revert(self, *args, **kwargs)
        except Fenced:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            migration_id = kwargs.get("migration_id")
            LOG.exception("migration %s: revert of %s could not finish: %s", migration_id, self.name, exc)
            record_leftover_for_reconcile(self.services, "revert", self.name,
                                          f"revert could not finish: {type(exc).__name__}: {exc}",
                                          migration_id=migration_id)

    return guarded
