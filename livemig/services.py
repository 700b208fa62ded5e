"""The services a process needs (database, drivers, reservations), built from
settings once per process and handed to tasks through their constructors.

A flow rebuilt from its logbook (by a conductor, or `migration resume`) runs
with the services of the process that runs it, never with settings saved in
the logbook: the process's own (see `configure`), or those of the caller
building the engine here (see `building_flows_with`)."""
from __future__ import annotations

import contextlib
import contextvars
import os
import time
from functools import cached_property
from typing import Any, Iterator, Mapping

from livemig.config import Settings
from livemig.coordination.base import ReservationService
from livemig.drivers.registry import DriverRegistry
from livemig.persistence.database import Database, database_for
from livemig.policies.options import MigrationPolicyOptions


# How long a host's URI is reused without asking the database again (every
# step of every migration needs both hosts' URIs; a host's URI is fixed when it
# is added).
HOST_URI_TTL_S = 30.0


class Services:
    # A flow built without options runs with every option's default.
    options = MigrationPolicyOptions()

    def __init__(self, settings: Settings):
        self.settings = settings
        self._host_uris: dict[str, tuple[str, float]] = {}

    def host_uri(self, name: str) -> str:
        cached = self._host_uris.get(name)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        from livemig.persistence.inventory import host_not_found, host_uris

        # All of them at once: a conductor soon needs most hosts' URIs.
        with self.db.reading() as session:
            uris = host_uris(session)
        if name not in uris:
            raise host_not_found(name)
        expires = now + HOST_URI_TTL_S
        self._host_uris.update((host, (uri, expires)) for host, uri in uris.items())
        return uris[name]

    @cached_property
    def db(self) -> Database:
        return database_for(self.settings.database_url)

    @cached_property
    def drivers(self) -> DriverRegistry:
        return DriverRegistry()

    @cached_property
    def jobboard(self):
        """A connected jobboard to post on, kept for the process: connecting
        and closing one per request costs about a second (TaskFlow joins its
        threads). It does not follow the jobs posted (conductors do)."""
        from livemig.jobs import open_board

        return open_board(self, watch_jobs=False)

    def close(self) -> None:
        """Close what these services opened (the jobboard and its ZooKeeper
        session, the reservations' session, hypervisor connections); the
        next use opens them again."""
        board = self.__dict__.pop("jobboard", None)
        if board is not None:
            board.close()  # with its ZooKeeper session (see jobs.open_board)
        reservations = self.__dict__.pop("reservations", None)
        if reservations is not None:
            reservations.close()
        drivers = self.__dict__.pop("drivers", None)
        if drivers is not None:
            drivers.close()

    @cached_property
    def reservations(self) -> ReservationService:
        if self.settings.zookeeper_hosts:
            from livemig.coordination.zookeeper import ZookeeperReservations

            return ZookeeperReservations(self.settings)
        from livemig.coordination.local import LocalReservations

        return LocalReservations(self.db, self.settings.data_dir)


class MigrationServices:
    """A process's services as one migration sees them: the same database,
    drivers and reservations, with that migration's options: those that are
    settings (config.MIGRATION_OPTIONS) over the process's settings, all of
    them in `options`."""

    def __init__(self, base: Services, options: Mapping[str, Any]):
        self._base = base
        self.settings = base.settings.with_options(options)
        self.options = MigrationPolicyOptions.from_mapping(options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


_services: dict[tuple[int, str], Services] = {}
_configured: dict[int, Settings] = {}
_building: contextvars.ContextVar[Services | None] = contextvars.ContextVar("livemig_flow_services", default=None)


def services_for(settings: Settings) -> Services:
    """Shared per process and settings (the settings this process was given,
    never a job's), so that calls and flows reuse connections."""
    import json

    key = (os.getpid(), json.dumps(settings.to_dict(), sort_keys=True))
    found = _services.get(key)
    if found is None:
        found = _services[key] = Services(settings)
    return found


def configure(settings: Settings) -> Services:
    """Make `settings` this process's: the flows a conductor rebuilds from
    jobs run with them."""
    _configured[os.getpid()] = settings
    return services_for(settings)


def process_services() -> Services:
    """This process's services: as configured, else from its own config file
    and environment."""
    settings = _configured.get(os.getpid())
    if settings is None:
        from livemig.config import load_settings

        return configure(load_settings())
    return services_for(settings)


@contextlib.contextmanager
def building_flows_with(services: Services) -> Iterator[None]:
    """Flows rebuilt in this thread (and context) meanwhile use `services`:
    a process that runs migrations for more than one set of settings (an
    embedding program, the tests) says which."""
    token = _building.set(services)
    try:
        yield
    finally:
        _building.reset(token)


def flow_services(options: Mapping[str, Any]) -> Services | MigrationServices:
    """The services a flow being built runs with, with its migration's options."""
    base = _building.get() or process_services()
    return MigrationServices(base, options) if options else base


def close_all() -> None:
    """Close every Services this process built (see Services.close)."""
    pid = os.getpid()
    for key in [key for key in _services if key[0] == pid]:
        _services.pop(key).close()
