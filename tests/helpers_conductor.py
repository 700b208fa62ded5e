"""A real conductor process, optionally with a kill point (see helpers_die).

Usage: python -m tests.helpers_conductor NAME [STEP WHEN]
Settings come from the environment (LIVEMIG_DATA_DIR, LIVEMIG_ZOOKEEPER_HOSTS...)."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from livemig.api import _services
from livemig.config import load_settings
from livemig.jobs import run_conductor
from tests.helpers_die import install_kill_point


def install_factory_fault(spec: str) -> None:
    """LIVEMIG_TEST_FACTORY_FAULT: "transient:N" makes the flow factory raise
    DatabaseUnavailable the first N times (a database blip while the engine
    is built), "permanent" makes it always refuse the job's arguments."""
    from livemig.errors import DatabaseUnavailable, InvalidInput
    from livemig.flows import live_migration

    original = live_migration.get_live_migration_flow
    kind, _, count = spec.partition(":")
    left = [int(count or 0)]

    def factory(*args, **kwargs):
        if kind == "permanent":
            raise InvalidInput("unknown setting(s): injected_by_test")
        if left[0] > 0:
            left[0] -= 1
            raise DatabaseUnavailable("database is unreachable: injected blip")
        return original(*args, **kwargs)

    live_migration.get_live_migration_flow = factory


def main() -> None:
    import os

    name = sys.argv[1]
    settings = load_settings()
    if len(sys.argv) == 4:
        install_kill_point(settings, sys.argv[2], sys.argv[3])
    if os.environ.get("LIVEMIG_TEST_FACTORY_FAULT"):
        install_factory_fault(os.environ["LIVEMIG_TEST_FACTORY_FAULT"])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("livemig").setLevel(logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_conductor(_services(settings), name=name, stop_event=stop)


if __name__ == "__main__":
    main()
