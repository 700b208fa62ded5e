"""A real runner process that SIGKILLs itself at a chosen point of a chosen step.

Usage: python -m tests.helpers_die DATA_DIR MIGRATION_ID STEP WHEN
WHEN is "before" (the step started, nothing done), "after" (its side effect
done, result not yet saved), "during" (migrate-domain only: the hypervisor
job is running), or "revert" (the step's revert done, not yet recorded). A test then resumes the migration from another process."""
from __future__ import annotations

import inspect
import os
import signal
import sys

from livemig.config import Settings
from livemig.drivers.fake import FakeDriver
from livemig.flows.live_migration import get_live_migration_flow
from livemig.runner import run_migration
from livemig.services import building_flows_with, services_for
from tests.unit.test_flow_contract import _atoms


def die() -> None:
    stamp = os.environ.get("LIVEMIG_KILL_STAMP")
    if stamp:
        # For the takeover benchmark: when exactly this process died.
        import time

        with open(stamp, "w") as f:
            f.write(repr(time.time()))
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill_point(settings: Settings, step: str, when: str) -> None:
    """Patch this process so that it SIGKILLs itself at STEP/WHEN."""
    with building_flows_with(services_for(settings)):
        classes = {a.name: type(a) for a in _atoms(get_live_migration_flow())}
    cls = classes[step]
    if when == "revert":
        original_revert = cls.revert

        def revert(self, *args, **kwargs):
            result = original_revert(self, *args, **kwargs)
            if self.name == step:
                die()
            return result

        revert.__signature__ = inspect.signature(original_revert)
        cls.revert = revert
    elif when == "during":
        original_poll = FakeDriver._poll

        def poll(self, *args, **kwargs):
            die()
            return original_poll(self, *args, **kwargs)

        FakeDriver._poll = poll
    else:
        original = cls.execute

        def execute(self, *args, **kwargs):
            if self.name == step and when == "before":
                die()
            result = original(self, *args, **kwargs)
            if self.name == step:
                die()
            return result

        execute.__signature__ = inspect.signature(original)
        cls.execute = execute


def main() -> None:
    data_dir, migration_id, step, when = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    settings = Settings(data_dir=data_dir, poll_interval_s=0.02)
    install_kill_point(settings, step, when)
    run_migration(services_for(settings), migration_id)
    sys.exit(3)  # never reached if the kill point was hit


if __name__ == "__main__":
    main()
