"""Reservations for a single controller machine, kept in the inventory
database (next to the SQLite file by default) and made atomic by a file lock,
because SQLite's deferred transactions do not serialise check-then-insert."""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

from livemig.coordination.base import Holding, HostLimit, ReservationService
from livemig.persistence.database import Database
from livemig.persistence.models import Reservation


class LocalReservations(ReservationService):
    fenced_by_claim = True  # rows of the inventory, written under the claim

    def __init__(self, db: Database, data_dir: str):
        self._db = db
        self._lock_path = Path(data_dir) / "reservations.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def try_reserve(self, migration_id: int, instance_uuid: str, hosts: list[HostLimit]) -> str | None:
        with self._locked(), self._db.session() as session:
            mine = set(session.scalars(sa.select(Reservation.host).where(
                Reservation.migration_id == migration_id)))
            if mine >= {h.host for h in hosts}:
                return None
            other = session.scalar(sa.select(Reservation.migration_id).where(
                Reservation.instance_uuid == instance_uuid, Reservation.migration_id != migration_id).limit(1))
            if other is not None:
                return f"instance {instance_uuid} is in migration {other}"
            for h in hosts:
                count = session.scalar(sa.select(sa.func.count()).select_from(Reservation).where(
                    Reservation.host == h.host, Reservation.migration_id != migration_id))
                if count >= h.limit:
                    return f"host {h.host} is in {count} migration(s), its limit is {h.limit}"
            for h in hosts:
                if h.host not in mine:
                    session.add(Reservation(host=h.host, migration_id=migration_id, instance_uuid=instance_uuid))
            return None

    def release(self, migration_id: int, hosts: list[str]) -> None:
        with self._locked(), self._db.session() as session:
            session.execute(sa.delete(Reservation).where(
                Reservation.migration_id == migration_id, Reservation.host.in_(hosts)))

    def holders(self, host: str) -> list[int]:
        with self._db.session() as session:
            return list(session.scalars(sa.select(Reservation.migration_id).where(Reservation.host == host)))

    def holdings(self) -> list[Holding]:
        with self._db.reading() as session:
            return [Holding(r.migration_id, r.instance_uuid, r.host) for r in session.scalars(
                sa.select(Reservation).order_by(Reservation.migration_id, Reservation.host))]

    def release_migration(self, migration_id: int) -> None:
        with self._locked(), self._db.session() as session:
            session.execute(sa.delete(Reservation).where(Reservation.migration_id == migration_id))
