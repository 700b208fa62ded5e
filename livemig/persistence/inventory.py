"""Queries and updates of the inventory that tasks, the API and the CLI share."""
from __future__ import annotations

import os
import socket
import uuid as uuidlib

import sqlalchemy as sa
from sqlalchemy.orm import Session

from livemig.errors import HostNotFound, InstanceNotFound, InvalidInput, MigrationNotFound
from livemig.persistence.models import Event, Host, Instance, Migration, utcnow
from livemig.states import FINISHED_MIGRATION_STATUSES, InstanceState, MigrationStatus

def controller_id() -> str:
    # Recomputed after fork, so a forked conductor names itself correctly.
    return f"{socket.gethostname()}:{os.getpid()}"


def get_host(session: Session, name: str) -> Host:
    host = session.get(Host, name)
    if host is None:
        raise HostNotFound(f"host {name!r} is not in the inventory (see `livemig host list`)")
    return host


def find_instance(session: Session, ref: str) -> Instance:
    """An instance by uuid or, if unambiguous, by name."""
    try:
        uuidlib.UUID(ref)
        found = session.get(Instance, ref)
        if found is not None:
            return found
    except ValueError:
        pass
    matches = list(session.scalars(sa.select(Instance).where(
        Instance.name == ref, Instance.state != InstanceState.DELETED.value)))
    if not matches:
        raise InstanceNotFound(f"instance {ref!r} is not in the inventory (see `livemig instance list`)")
    if len(matches) > 1:
        raise InvalidInput(f"instance name {ref!r} is ambiguous ({len(matches)} instances); use its uuid")
    return matches[0]


def get_migration(session: Session, migration_id: int) -> Migration:
    migration = session.get(Migration, migration_id)
    if migration is None:
        raise MigrationNotFound(f"migration {migration_id} does not exist")
    return migration


def unfinished_migrations(session: Session) -> sa.Select:
    finished = [s.value for s in FINISHED_MIGRATION_STATUSES]
    return sa.select(Migration).where(Migration.status.not_in(finished))


def event_row(migration_id: int, kind: str, name: str, state: str = "", message: str = "") -> dict:
    """An audit-trail event's columns, stamped now by this controller."""
    return {"migration_id": migration_id, "kind": kind, "name": name, "state": state, "message": message,
            "controller": controller_id(), "at": utcnow()}


def add_event(session: Session, migration_id: int, kind: str, name: str, state: str = "",
              message: str = "") -> None:
    session.add(Event(**event_row(migration_id, kind, name, state, message)))


def set_migration_status(session: Session, migration_id: int, status: MigrationStatus,
                         reason: str | None = None) -> Migration:
    migration = get_migration(session, migration_id)
    if (MigrationStatus(migration.status) in FINISHED_MIGRATION_STATUSES
            and status not in FINISHED_MIGRATION_STATUSES):
        # An outcome is final: a fenced-off controller waking up late must not
        # move a finished migration back to "running".
        add_event(session, migration_id, "note", "migration", migration.status,
                  f"ignored a late change to {status.value} from {controller_id()}")
        return migration
    if migration.status != status.value:
        migration.status = status.value
        add_event(session, migration_id, "status", "migration", status.value, reason or "")
    if reason is not None:
        migration.error_reason = reason
    if status is MigrationStatus.RUNNING and migration.started_at is None:
        migration.started_at = utcnow()
    if status in FINISHED_MIGRATION_STATUSES:
        migration.finished_at = utcnow()
    return migration


def created_resources(session: Session, migration_id: int, name: str) -> list[str]:
    """What a step recorded as created (kind "resource"), so that its revert
    removes exactly that even if the controller died before the step returned."""
    rows = session.scalars(sa.select(Event).where(
        Event.migration_id == migration_id, Event.kind == "resource", Event.name == name))
    created: list[str] = []
    for row in rows:
        if row.state == "created" and row.message not in created:
            created.append(row.message)
        elif row.state == "removed" and row.message in created:
            created.remove(row.message)
    return created
