"""`livemig conductor`: claim and run migration jobs from the ZooKeeper jobboard."""
from __future__ import annotations

import logging
import signal
import threading

import click

from livemig.cli.common import State, handle_errors
from livemig.errors import InvalidInput


@click.command()
@click.option("--name", default=None, help="Conductor name (default: conductor-HOST:PID).")
@click.option("--once", is_flag=True, help="Run one job, then exit.")
@click.option("--max-migrations", type=click.IntRange(min=1), default=None,
              help="Migrations run at once (default: the conductor_max_migrations setting, 16).")
@click.pass_obj
@handle_errors
def conductor(state: State, name: str | None, once: bool, max_migrations: int | None) -> None:
    """Run migrations posted to the jobboard (needs LIVEMIG_ZOOKEEPER_HOSTS).

    SIGTERM stops cleanly: each running migration finishes its current step
    and its job is handed back to the board for another conductor."""
    from livemig.api import _services
    from livemig.jobs import run_conductor

    settings = state.settings
    if not settings.zookeeper_hosts:
        raise InvalidInput("a conductor needs ZooKeeper: set LIVEMIG_ZOOKEEPER_HOSTS (or zookeeper_hosts)")
    state.context().require_admin("running a conductor")
    level = logging.DEBUG if state.debug else logging.INFO
    logging.getLogger().setLevel(logging.WARNING)
    for name_ in ("livemig", "livemig.conductor", "livemig.runner"):
        logging.getLogger(name_).setLevel(level)
    # Connection losses matter to a conductor's operator.
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_conductor(_services(settings), name=name, once=once, stop_event=stop, max_migrations=max_migrations)
