"""The `livemig` command's entry point (the console script and `python -m
livemig.cli`): kept as its own module so that both stay as they are while
the command line lives in livemig.cli.main."""
from __future__ import annotations

from livemig.cli.main import main

__all__ = ["main"]
