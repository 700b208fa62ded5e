"""Host reservations: how many migrations a host takes part in at once.

A reservation belongs to a migration (not to a controller process): it is
created idempotently by the flow's reserve step, survives controller crashes,
and is released by the flow's release step or by its revert."""
from __future__ import annotations

import abc
import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class HostLimit:
    host: str
    limit: int


@dataclasses.dataclass(frozen=True)
class Holding:
    """One reservation as the service keeps it. `host` None: ZooKeeper's
    reservation of the instance itself, found without any host's."""

    migration_id: int
    instance_uuid: str
    host: str | None


class ReservationService(abc.ABC):
    # Whether a reservation is a database write of the thread that runs the
    # migration, which that thread's claim fences by itself (livemig.fencing);
    # a znode is not, so the reserve step checks the claim before making one.
    fenced_by_claim = False

    @abc.abstractmethod
    def try_reserve(self, migration_id: int, instance_uuid: str, hosts: list[HostLimit]) -> str | None:
        """Reserve every host for this migration, all or nothing.

        Returns None when the migration holds them (now or already), otherwise
        the reason it cannot have them yet."""

    @abc.abstractmethod
    def release(self, migration_id: int, hosts: list[str]) -> None:
        """Drop this migration's reservations; releasing twice is fine."""

    def wait_for_change(self, instance_uuid: str, hosts: list[str], poll_interval_s: float) -> None:
        """Return once a reservation that blocks a migration of this instance
        between these hosts may have been released, or after a while (at most
        about a second, so the waiter can check for an abort). Polls unless
        the service can be notified."""
        time.sleep(poll_interval_s)

    @abc.abstractmethod
    def holders(self, host: str) -> list[int]:
        """The migrations holding this host."""

    @abc.abstractmethod
    def holdings(self) -> list[Holding]:
        """Every reservation held, on every host (for `livemig reconcile`)."""

    def release_migration(self, migration_id: int) -> None:
        """Drop every reservation this migration holds, wherever it is (for
        reconcile, which knows the migration but not which hosts it holds)."""
        held = [h for h in self.holdings() if h.migration_id == migration_id]
        self.release(migration_id, sorted({h.host for h in held if h.host is not None}))

    def close(self) -> None:
        pass
