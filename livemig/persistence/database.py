"""The database: one SQLAlchemy engine for the inventory and TaskFlow's logbooks."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from livemig.errors import DatabaseUnavailable, InvalidInput

ALEMBIC_DIR = Path(__file__).with_name("alembic")
# The newest revision in alembic/versions; a test checks they agree.
SCHEMA_HEAD = "0001"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets a CLI reader look at a migration while a runner writes it.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # In WAL mode NORMAL survives any process crash (what resume relies on);
    # only an OS crash or power loss can lose the last commits.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


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
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = {"connect_timeout": 5}
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.drivername.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<malformed URL>"


class Database:
    """Owns the engine and session factory; built once per process."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._taskflow_backend = None

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        try:
            with self._sessions.begin() as session:
                yield session
        except sa.exc.OperationalError as exc:
            raise self._unreachable(exc) from None

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
            self._taskflow_backend = _shared_connection_backend()(
                {"connection": self.engine.url.render_as_string(hide_password=False)}, engine=self.engine
            )
        return self._taskflow_backend

    def dispose(self) -> None:
        self.engine.dispose()


def _lazy_module(name: str) -> None:
    """Register `name` so that it executes on first attribute access."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    # Bound on its package too: `from package import name` then takes it as
    # it is, where the import system would look inside (and so load) it.
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)


def _shared_connection_backend():
    # TaskFlow's backend imports its schema-migration module, and with it
    # alembic and every SQLAlchemy dialect (~100 ms of each command's start),
    # though only a schema upgrade uses it.
    _lazy_module("taskflow.persistence.backends.sqlalchemy.migration")
    from taskflow.persistence.backends.impl_sqlalchemy import SQLAlchemyBackend

    class SharedConnectionBackend(SQLAlchemyBackend):
        """TaskFlow's SQL backend builds its table metadata anew for every
        connection, i.e. for every atom state change: most of a conductor's
        CPU, and memory that grew by megabytes per migration. Its connections
        hold no state besides that metadata (each call opens its own
        transaction on the engine), so one is shared."""

        _shared = None
        _shared_lock = threading.Lock()

        def get_connection(self):
            with self._shared_lock:
                if self._shared is None:
                    self._shared = super().get_connection()
                return self._shared

    return SharedConnectionBackend


_databases: dict[tuple[int, str], Database] = {}


def database_for(url: str) -> Database:
    """One Database per URL per process (a forked child gets its own)."""
    key = (os.getpid(), url)
    db = _databases.get(key)
    if db is None:
        db = _databases[key] = Database(url)
    return db
