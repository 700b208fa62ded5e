"""Queries and updates of the inventory that tasks, the API and the CLI share."""
from __future__ import annotations

import functools
import os
import socket
import uuid as uuidlib

import sqlalchemy as sa
from sqlalchemy.orm import Session

from livemig.errors import HostNotFound, InstanceNotFound, InvalidInput, MigrationEnded, MigrationNotFound
from livemig.fencing import Claim, current_claim, epoch_matches, fence_params, stale
from livemig.input_bounds import is_migration_id
from livemig.persistence.models import Event, Host, Instance, Migration, utcnow
from livemig.states import FINISHED_MIGRATION_STATUSES, InstanceState, MigrationStatus

def controller_id() -> str:
    # Recomputed after fork, so a forked conductor names itself correctly.
    return f"{socket.gethostname()}:{os.getpid()}"


def host_not_found(name: str) -> HostNotFound:
    return HostNotFound(f"host {name!r} is not in the inventory (see `livemig host list`)")


def get_host(session: Session, name: str) -> Host:
    host = session.get(Host, name)
    if host is None:
        raise host_not_found(name)
    return host


def get_hosts(session: Session, *names: str) -> list[Host]:
    """Hosts by name, in the order asked, in one query."""
    found = {host.name: host for host in session.scalars(sa.select(Host).where(Host.name.in_(set(names))))}
    for name in names:
        if name not in found:
            raise host_not_found(name)
    return [found[name] for name in names]


def host_uris(session: Session) -> dict[str, str]:
    """Every host's URI, by name."""
    return {name: uri for name, uri in session.execute(sa.select(Host.name, Host.uri))}


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
        if session.get(Host, ref) is not None:
            # The commonest slip: `migrate --live HOST` meaning "empty this host".
            raise InstanceNotFound(f"{ref!r} is a host, not an instance; to move every instance off it: "
                                   f"livemig host drain {ref}")
        raise InstanceNotFound(f"instance {ref!r} is not in the inventory (see `livemig instance list`)")
    if len(matches) > 1:
        raise InvalidInput(f"instance name {ref!r} is ambiguous ({len(matches)} instances); use its uuid")
    return matches[0]


def get_migration(session: Session, migration_id: int) -> Migration:
    # An id the database cannot hold (SQLite raises OverflowError for it) is
    # simply not a migration.
    migration = session.get(Migration, migration_id) if is_migration_id(migration_id) else None
    if migration is None:
        raise MigrationNotFound(f"migration {migration_id} does not exist")
    return migration


def unfinished(status: sa.ColumnElement) -> sa.ColumnElement:
    """The condition that a migration status column holds no outcome yet."""
    return status.not_in(sorted(s.value for s in FINISHED_MIGRATION_STATUSES))


def unfinished_migrations() -> sa.Select:
    return sa.select(Migration).where(unfinished(Migration.status))


def event_row(migration_id: int, kind: str, name: str, state: str = "", message: str = "") -> dict:
    """An audit-trail event's columns, stamped now by this controller."""
    return {"migration_id": migration_id, "kind": kind, "name": name, "state": state, "message": message,
            "controller": controller_id(), "at": utcnow()}


def with_audit_event(update: sa.Update) -> sa.Insert:
    """One statement (a data-modifying WITH, PostgreSQL only) that runs
    `update` and inserts an audit event if, and only if, it updated a row; its
    rowcount is the update's. The event's columns are bound as
    `event_<column>` (see audit_event_params)."""
    events = Event.__table__
    columns = [column for column in events.columns if column.name != "id"]  # the id is generated
    updated = update.returning(sa.literal(1).label("updated")).cte("updated")
    event = sa.select(*(sa.bindparam(f"event_{column.name}", type_=column.type) for column in columns))
    insert = sa.insert(events).from_select([column.name for column in columns], event.select_from(updated))
    # SQLAlchemy keeps the rowcount of UPDATE and DELETE only, unless told.
    return insert.execution_options(preserve_rowcount=True)


# A plain INSERT of audit events (event_row dicts), built once for every writer.
INSERT_EVENT = sa.insert(Event.__table__)


@functools.cache
def _fenced_event_insert() -> sa.Insert:
    """One event, inserted only while the claim bound as fence_mid/fence_epoch is current."""
    events = Event.__table__
    columns = [column for column in events.columns if column.name != "id"]
    row = sa.select(*(sa.bindparam(f"event_{column.name}", type_=column.type) for column in columns))
    return (sa.insert(events).from_select([column.name for column in columns], row.where(epoch_matches()))
            .execution_options(preserve_rowcount=True))


def insert_fenced_event(conn: sa.Connection, event: dict) -> None:
    """One event through `conn`; in a thread running its migration under a
    claim, only while that claim is current (else Fenced, nothing written)."""
    claim = _claim_of(event["migration_id"])
    if claim is None:
        insert_events(conn, event)
        return
    if conn.execute(_fenced_event_insert(), {**audit_event_params(event), **fence_params(claim)}).rowcount != 1:
        raise stale(claim, None)


def insert_events(conn: sa.Connection, events: dict | list[dict]) -> None:
    """One event, or several in one statement, through `conn`."""
    conn.execute(INSERT_EVENT, events)


def audit_event_params(event: dict) -> dict:
    return {f"event_{column}": value for column, value in event.items()}


def update_with_audit_event(conn: sa.Connection, update: sa.Update, params: dict, event: dict | None,
                            combined: sa.Insert | None = None) -> int:
    """Runs `update` with `params` and, if it updated a row, inserts the audit
    `event` (None: no event); returns the update's rowcount. On PostgreSQL
    that is one statement (`combined`: with_audit_event(update), if the
    caller keeps one); elsewhere two, in the caller's transaction."""
    if event is None:
        return conn.execute(update, params).rowcount
    if conn.dialect.name == "postgresql":
        statement = combined if combined is not None else with_audit_event(update)
        return conn.execute(statement, {**params, **audit_event_params(event)}).rowcount
    updated = conn.execute(update, params).rowcount
    if updated == 1:
        insert_events(conn, event)
    return updated


def add_event(session: Session, migration_id: int, kind: str, name: str, state: str = "",
              message: str = "") -> None:
    session.add(Event(**event_row(migration_id, kind, name, state, message)))


# Columns a status change may set besides the status (see change_migration_status).
STATUS_CHANGE_FIELDS = frozenset({"progress", "downtime_ms"})


def _claim_of(migration_id: int) -> Claim | None:
    """This thread's claim, if it is on this migration (see livemig.fencing)."""
    claim = current_claim()
    return claim if claim is not None and claim.migration_id == migration_id else None


def change_migration_status(conn: sa.Connection, migration_id: int, status: MigrationStatus,
                            reason: str | None = None, **fields: object) -> None:
    """Moves a migration to `status` (with `reason` as its error reason, and
    `fields` among STATUS_CHANGE_FIELDS), with a "status" event if it changed.

    An outcome is final: once a migration is completed, failed, cancelled or
    in error, no change moves it (a late controller's change is only noted;
    the same outcome again is nothing). A thread running the migration under
    a claim (livemig.fencing) changes it only while that claim is current,
    and raises Fenced otherwise, having written nothing.

    In Core statements, not the ORM: tasks change statuses several times per
    migration. On PostgreSQL the read, the update and the event are one
    statement, so outside a transaction block it is one round trip."""
    unknown = set(fields) - STATUS_CHANGE_FIELDS
    if unknown:
        raise ValueError(f"not a status-change field: {sorted(unknown)}")
    claim = _claim_of(migration_id)
    now = utcnow()
    assigned = {"status": status.value, **{k: v for k, v in fields.items() if v is not None}}
    if reason is not None:
        assigned["error_reason"] = reason
    if status in FINISHED_MIGRATION_STATUSES:
        assigned["finished_at"] = now
    controller = controller_id()
    params = {"mid": migration_id, "at": now, "controller": controller, "message": reason or "",
              "ignored": f"ignored a late change to {status.value} from {controller}", **assigned}
    if conn.dialect.name == "postgresql":
        statement = _status_change_statement(tuple(sorted(assigned)), status is MigrationStatus.RUNNING,
                                             claim is not None)
        if claim is not None:
            params.update(fence_params(claim))
        old_status, old_epoch = conn.execute(statement, params).one()
        if old_status is None:
            raise MigrationNotFound(f"migration {migration_id} does not exist")
        if claim is not None and old_epoch != claim.epoch:
            raise stale(claim, old_epoch)
        return
    table = Migration.__table__
    old = conn.execute(sa.select(table.c.status, table.c.claim_epoch).where(table.c.id == migration_id)).first()
    if old is None:
        raise MigrationNotFound(f"migration {migration_id} does not exist")
    values: dict[str, object] = dict(assigned)
    if status is MigrationStatus.RUNNING:
        values["started_at"] = sa.func.coalesce(table.c.started_at, now)
    # The read above is outside any transaction (pysqlite begins one at the
    # first write): the update re-checks both conditions itself.
    update = sa.update(table).where(table.c.id == migration_id, unfinished(table.c.status))
    if claim is not None:
        update = update.where(table.c.claim_epoch == claim.epoch)
    if conn.execute(update.values(values)).rowcount == 1:
        if old.status != status.value:
            insert_events(conn, event_row(migration_id, "status", "migration", status.value, reason or ""))
        return
    now_status, now_epoch = conn.execute(
        sa.select(table.c.status, table.c.claim_epoch).where(table.c.id == migration_id)).one()
    if claim is not None and now_epoch != claim.epoch:
        raise stale(claim, now_epoch)
    if now_status != status.value:
        insert_events(conn, event_row(migration_id, "note", "migration", now_status, params["ignored"]))


@functools.cache
def _status_change_statement(assigned: tuple[str, ...], running: bool, fenced: bool) -> sa.Executable:
    """PostgreSQL: lock and read the row, update it unless its outcome is
    already recorded (or, `fenced`, unless the claim epoch bound as
    `fence_epoch` is no longer current), and insert the status event or the
    "ignored" note, as one statement; it returns the previous status (none:
    no such migration) and claim epoch."""
    migrations, events = Migration.__table__, Event.__table__
    mid = sa.bindparam("mid", type_=sa.Integer)
    at = sa.bindparam("at", type_=events.c.at.type)
    controller = sa.bindparam("controller", type_=sa.String)
    old = (sa.select(migrations.c.id, migrations.c.status, migrations.c.claim_epoch).where(migrations.c.id == mid)
           .with_for_update().cte("old"))
    values = {column: sa.bindparam(column, type_=migrations.c[column].type) for column in assigned}
    if running:
        values["started_at"] = sa.func.coalesce(migrations.c.started_at, at)
    current = old.c.claim_epoch == sa.bindparam("fence_epoch", type_=sa.Integer) if fenced else sa.true()
    update = (sa.update(migrations).where(migrations.c.id == old.c.id, unfinished(old.c.status), current)
              .values(values))
    updated = update.returning(old.c.status.label("old_status")).cte("updated")
    new_status = sa.bindparam("status", type_=sa.String)
    status_event = sa.select(mid, sa.literal("status"), sa.literal("migration"), new_status,
                             sa.bindparam("message", type_=sa.Text), controller, at
                             ).where(updated.c.old_status != new_status)
    ignored_note = sa.select(mid, sa.literal("note"), sa.literal("migration"), old.c.status,
                             sa.bindparam("ignored", type_=sa.Text), controller, at
                             ).where(~sa.exists(sa.select(updated.c.old_status)), old.c.status != new_status,
                                     current)
    columns = ["migration_id", "kind", "name", "state", "message", "controller", "at"]
    inserted = sa.insert(events).from_select(columns, sa.union_all(status_event, ignored_note)).cte("inserted")
    return sa.select(sa.select(old.c.status).scalar_subquery(),
                     sa.select(old.c.claim_epoch).scalar_subquery()).add_cte(updated, inserted)


def raise_claim_epoch(conn: sa.Connection, migration_id: int) -> int:
    """A new claim of the migration: raises its claim epoch and returns it
    (the fencing token of the claimant), unless its outcome is recorded
    (MigrationEnded: an outcome is final, nothing of it may run again)."""
    table = Migration.__table__
    epoch = conn.execute(sa.update(table).where(table.c.id == migration_id, unfinished(table.c.status))
                         .values(claim_epoch=table.c.claim_epoch + 1).returning(table.c.claim_epoch)).scalar()
    if epoch is None:
        status = conn.execute(sa.select(table.c.status).where(table.c.id == migration_id)).scalar()
        if status is None:
            raise MigrationNotFound(f"migration {migration_id} does not exist")
        raise MigrationEnded(f"migration {migration_id} already ended ({status}); an outcome is final, "
                             f"so nothing of it runs again", migration_id=migration_id, status=status)
    insert_events(conn, event_row(migration_id, "note", "claim", str(epoch), f"claimed with epoch {epoch}"))
    return epoch


def set_migration_status(session: Session, migration_id: int, status: MigrationStatus,
                         reason: str | None = None, **fields: object) -> None:
    """change_migration_status within an ORM session's transaction."""
    change_migration_status(session.connection(), migration_id, status, reason, **fields)
    loaded = session.identity_map.get(session.identity_key(Migration, migration_id))
    if loaded is not None:
        session.expire(loaded)  # the row changed under the ORM


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


def record_leftover(session: Session, kind: str, name: str, reason: str, host: str | None = None,
                    migration_id: int | None = None) -> None:
    """Keep for `livemig reconcile` something that could not be undone or
    checked; one open record per (migration, host, kind, name)."""
    from livemig.persistence.models import Leftover

    existing = session.scalar(sa.select(Leftover).where(
        Leftover.migration_id == migration_id, Leftover.host == host, Leftover.kind == kind,
        Leftover.name == name, Leftover.resolved_at.is_(None)))
    if existing is not None:
        existing.reason = reason
        return
    session.add(Leftover(migration_id=migration_id, host=host, kind=kind, name=name, reason=reason))
