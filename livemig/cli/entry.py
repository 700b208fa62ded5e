"""The `livemig` command's entry point: loads the command line with the
garbage collector paused, then freezes what loaded.

Importing SQLAlchemy, TaskFlow and networkx creates about a million objects
that live as long as the process. With the collector running, it walks them
again and again while they load (about 40 ms of the command's ~0.3 s of
imports) and later in every full collection, for no garbage. Freezing them
(gc.freeze) after the imports moves them out of the collector's sight; the
command's own objects are collected as usual. This is done here, and not in
`import livemig`, because freezing is a decision for whoever owns the
process: the command does, a program that embeds livemig does not."""
from __future__ import annotations

import gc


def main() -> None:
    collecting = gc.isenabled()
    gc.disable()
    try:
        from livemig.cli.main import main as run_command
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
    run_command()
