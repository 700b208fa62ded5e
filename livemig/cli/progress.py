"""A live progress line for a migration, on stderr (stdout stays for results)."""
from __future__ import annotations

import sys

import click

from livemig.cli.common import err
from livemig.views import MigrationView


class MigrationProgress:
    """A progress bar on a terminal; elsewhere one line per status change;
    nothing at all when not `enabled` (`--quiet`, or JSON output)."""

    def __init__(self, enabled: bool = True):
        self.quiet = not enabled
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        if self.enabled:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]migration {task.fields[mid]}[/bold] {task.fields[status]:<15}"), BarColumn(),
                TaskProgressColumn(), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=err.real(),
                transient=False)
        self._task = None
        self._last_status = None

    def __enter__(self) -> "MigrationProgress":
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._progress.stop()

    def __call__(self, view: MigrationView) -> None:
        detail = ""
        if view.memory_total:
            detail = f"{view.memory_processed / 2**20:.0f}/{view.memory_total / 2**20:.0f} MiB"
            if view.memory_bps:
                detail += f" {view.memory_bps / 2**20:.0f} MiB/s"
        phase = view.phase_summary if view.status == "running" else ""
        if phase:
            detail = f"{detail} ({phase})" if detail else phase
        if self.quiet:
            return
        if not self.enabled:
            # Not a terminal: one line per status change and per phase change
            # (not per pass), so logs stay readable.
            shown = (view.status, view.phase if view.status == "running" else "")
            if shown != self._last_status:
                click.echo(f"migration {view.id}: {view.status}" + (f" ({view.phase})" if shown[1] else ""),
                           err=True)
                self._last_status = shown
            return
        if self._task is None:
            self._task = self._progress.add_task("migrate", total=1.0, mid=view.id, status=view.status, detail="")
        self._progress.update(self._task, completed=view.progress, status=view.status, detail=detail)
