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


def main() -> None:
    name = sys.argv[1]
    settings = load_settings()
    if len(sys.argv) == 4:
        install_kill_point(settings, sys.argv[2], sys.argv[3])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("livemig").setLevel(logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_conductor(_services(settings), name=name, stop_event=stop)


if __name__ == "__main__":
    main()
