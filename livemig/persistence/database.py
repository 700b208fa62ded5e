"""The database: one SQLAlchemy engine for the inventory and TaskFlow's logbooks."""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from livemig.errors import DatabaseUnavailable, InvalidInput, MigrationNotFound
from livemig.fencing import Claim, current_claim, stale

ALEMBIC_DIR = Path(__file__).with_name("alembic")
# The newest revision in alembic/versions; a test checks they agree.
SCHEMA_HEAD = "0007"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets a CLI reader look at a migration while a runner writes it.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # In WAL mode NORMAL survives any process crash (what resume relies on);
    # only an OS crash or power loss can lose the last commits.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# A pooled server connection idle longer than this is tested before use.
IDLE_PING_S = 5.0


def _ping_idle_connections(engine: sa.Engine) -> None:
    """SQLAlchemy's pool_pre_ping, but only for connections idle a while.

    pre_ping spends a round trip on every checkout, and a migration checks
    out about fifty connections in quick succession. A connection used in the
    last few seconds is almost surely alive; if the server did restart in
    that window, the statement fails, SQLAlchemy discards the pool, and
    TaskFlow's storage retries its write on a fresh connection."""
    import time

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # noqa: BLE001 - any failure means a dead connection
            # The pool replaces the connection and tries again.
            raise sa.exc.DisconnectionError(str(exc)) from exc


def without_transaction_blocks(engine: sa.Engine) -> sa.Engine:
    """The engine for statements that need no transaction block: on a server
    it skips the BEGIN and COMMIT round trips around them (SQLite has none).

    On a server, make_engine's pool is in autocommit mode and the engine it
    returns is a view of it that opens transactions; this is the pool
    itself. Most of a migration's statements stand alone, and switching a
    pooled connection's mode at checkout and back at checkin cost about a
    third of such a statement's client CPU, so only transactions pay it."""
    return _autocommit_pools.get(engine, engine)


# make_engine's transactional engine -> its pool in autocommit mode (servers only).
_autocommit_pools: weakref.WeakKeyDictionary[sa.Engine, sa.Engine] = weakref.WeakKeyDictionary()


def make_engine(url: str) -> sa.Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise InvalidInput(f"malformed database URL {url!r}") from None
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 would pick psycopg2; we ship psycopg 3.
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs: dict = {"future": True}
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Pooled: opening and closing a SQLite connection per transaction
        # (NullPool) costs milliseconds each, and a migration has ~100 of them.
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs["connect_args"] = {"connect_timeout": 5}
        # Connections are opened only when needed, but kept: a conductor runs
        # up to 16 migrations at once (a connection each), and with the
        # default pool of 5 every connection past the fifth was closed after
        # use and opened again for the next statement (a server process
        # forked and torn down each time).
        kwargs["pool_size"] = 32
        kwargs["max_overflow"] = 32
        # The pool's connections stay in autocommit mode (see
        # without_transaction_blocks); the returned engine opens transactions,
        # READ COMMITTED whatever the server's default: livemig's status
        # changes lock their row and re-check it, and do not retry the
        # serialization failures a stricter level can raise.
        kwargs["isolation_level"] = "AUTOCOMMIT"
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.drivername.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    _ping_idle_connections(engine)
    transactional = engine.execution_options(isolation_level="READ COMMITTED")
    _autocommit_pools[transactional] = engine
    return transactional


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<malformed URL>"


def _check_claim(conn: sa.Connection, claim: Claim) -> None:
    """Raises Fenced unless `claim` is still its migration's current one. Run
    in a transaction that has written: on a server the row lock orders it
    against a new claim's epoch change; SQLite's writer holds the database."""
    from livemig.persistence.models import Migration

    migrations = Migration.__table__
    epoch = conn.execute(sa.select(migrations.c.claim_epoch).where(migrations.c.id == claim.migration_id)
                         .with_for_update()).scalar()
    if epoch != claim.epoch:
        raise stale(claim, epoch)


def _note_session_write(session: Session, _flush_context) -> None:
    session.info["wrote"] = True


def _note_session_statement(state) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info["wrote"] = True


def _fence_session_commit(session: Session) -> None:
    """A session of a thread that runs a migration under a claim commits its
    writes only while the claim is current (see livemig.fencing)."""
    claim = current_claim()
    if claim is None:
        return
    if session.new or session.dirty or session.deleted:
        session.flush()  # commit flushes after this hook: the check must see every write
    if session.info.pop("wrote", False):
        _check_claim(session.connection(), claim)


class Database:
    """Owns the engine and session factory; built once per process."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self._sessions, "after_flush", _note_session_write)
        event.listen(self._sessions, "do_orm_execute", _note_session_statement)
        event.listen(self._sessions, "before_commit", _fence_session_commit)
        self._autocommit = without_transaction_blocks(self.engine)
        self._readers = sessionmaker(self._autocommit, expire_on_commit=False, autoflush=False)
        self._taskflow_backend = None

    @contextlib.contextmanager
    def _unreachable_reported(self, context: contextlib.AbstractContextManager) -> Iterator:
        """`context`, with a lost or refused server reported as DatabaseUnavailable."""
        try:
            with context as value:
                yield value
        except sa.exc.OperationalError as exc:
            raise self._unreachable(exc) from None

    def session(self) -> contextlib.AbstractContextManager[Session]:
        """A transaction: committed on success, rolled back on error."""
        return self._unreachable_reported(self._sessions.begin())

    def transaction(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """A Core connection in a transaction: for a few statements that the
        ORM would only slow down. In a thread running a migration under a
        claim, what it wrote is committed only while the claim is current
        (see livemig.fencing)."""
        return self._unreachable_reported(self._fenced_transaction())

    def autocommit(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """A Core connection for statements that each stand alone: outside
        any transaction block on a server (no BEGIN and COMMIT round trips);
        SQLite, which has no round trips, takes them in a transaction. In a
        thread running a migration under a claim, a transaction checked like
        `transaction()`'s: a lone statement cannot carry that check."""
        if current_claim() is not None:
            return self.transaction()
        return self._unreachable_reported(self._autocommit.begin())

    @contextlib.contextmanager
    def _fenced_transaction(self) -> Iterator[sa.Connection]:
        claim = current_claim()
        with self.engine.begin() as conn:
            if claim is None:
                yield conn
                return
            wrote: list[bool] = []

            def _note_write(_conn, clauseelement, *_args) -> None:
                if getattr(clauseelement, "is_dml", False):
                    wrote.append(True)

            event.listen(conn, "before_execute", _note_write)
            try:
                yield conn
            finally:
                event.remove(conn, "before_execute", _note_write)
            if wrote:
                _check_claim(conn, claim)

    def reading(self) -> contextlib.AbstractContextManager[Session]:
        """A session that only reads: each statement sees what is committed
        when it runs. Changes made through it are not saved."""
        return self._unreachable_reported(self._readers())

    def record_event(self, migration_id: int, kind: str, name: str, state: str = "", message: str = "") -> None:
        """One audit-trail event: a plain INSERT compiled once, outside a
        transaction block on a server (through an ORM session each cost
        several times the CPU)."""
        from livemig.persistence.inventory import event_row, insert_fenced_event

        with self._unreachable_reported(self._autocommit.begin()) as conn:
            insert_fenced_event(conn, event_row(migration_id, kind, name, state, message))

    def set_migration_status(self, migration_id: int, status, reason: str | None = None, **fields: object) -> None:
        """inventory.change_migration_status on its own: one round trip
        outside a transaction block on PostgreSQL, one transaction on SQLite."""
        from livemig.persistence.inventory import change_migration_status

        # The change checks this thread's claim itself, in the same statement.
        with self._unreachable_reported(self._autocommit.begin()) as conn:
            change_migration_status(conn, migration_id, status, reason, **fields)

    def set_job(self, migration_id: int, job_uuid: str) -> None:
        """Names the migration's jobboard job, with a "posted" note: one
        statement outside a transaction block on PostgreSQL."""
        from livemig.persistence.inventory import event_row, update_with_audit_event
        from livemig.persistence.models import Migration

        migrations = Migration.__table__
        update = sa.update(migrations).where(migrations.c.id == migration_id).values(job_id=job_uuid)
        event = event_row(migration_id, "note", "jobboard", "posted", f"job {job_uuid}")
        with self.autocommit() as conn:
            if update_with_audit_event(conn, update, {}, event) != 1:
                raise MigrationNotFound(f"migration {migration_id} does not exist")

    def is_current(self) -> bool:
        """Both schemas at head already (one cheap query instead of alembic)."""
        try:
            with self.engine.connect() as conn:
                version = conn.execute(sa.text("SELECT version_num FROM livemig_alembic_version")).scalar()
                conn.execute(sa.text("SELECT 1 FROM atomdetails WHERE 1 = 0"))
        except sa.exc.DBAPIError:
            return False
        return version == SCHEMA_HEAD

    def _unreachable(self, exc: sa.exc.OperationalError) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"database {describe_url(self.url)} is unreachable: {str(exc.orig).strip().splitlines()[0]}")

    def upgrade(self) -> None:
        """Bring livemig's schema and TaskFlow's logbook schema to head."""
        if self.is_current():
            return
        # Imported only when needed: alembic costs ~70 ms of every command's start.
        from alembic import command as alembic_command
        from alembic.config import Config as AlembicConfig

        try:
            with self.engine.begin() as connection:
                cfg = AlembicConfig()
                cfg.set_main_option("script_location", str(ALEMBIC_DIR))
                cfg.attributes["connection"] = connection
                alembic_command.upgrade(cfg, "head")
            backend = self.taskflow_backend()
            with contextlib.closing(backend.get_connection()) as conn:
                conn.upgrade()
        except sa.exc.OperationalError as exc:
            raise self._unreachable(exc) from None

    def taskflow_backend(self):
        """TaskFlow's SQL persistence backend on this same engine."""
        if self._taskflow_backend is None:
            from livemig.persistence.taskflow_backend import SharedConnectionBackend

            self._taskflow_backend = SharedConnectionBackend(
                {"connection": self.engine.url.render_as_string(hide_password=False)}, engine=self.engine
            )
        return self._taskflow_backend

    def dispose(self) -> None:
        self.engine.dispose()


_databases: dict[tuple[int, str], Database] = {}


def database_for(url: str) -> Database:
    """One Database per URL per process (a forked child gets its own)."""
    key = (os.getpid(), url)
    db = _databases.get(key)
    if db is None:
        db = _databases[key] = Database(url)
    return db


def close_all() -> None:
    """Close the connection pools of every Database this process opened; the
    next database_for opens a new one."""
    pid = os.getpid()
    for key in [key for key in _databases if key[0] == pid]:
        _databases.pop(key).dispose()
