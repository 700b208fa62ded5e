"""`livemig operation list|show|abort|resume`, and what `host drain` and
`host undrain` print: the plan, a live table of moves with an overall bar on
a terminal, and a summary."""
from __future__ import annotations

import json
import sys

import click

from livemig.cli import bounded
from livemig.cli.common import State, emit, err, format_option, handle_errors, out, outcome_reported_here
from livemig.operations import api as operations
from livemig.operations.views import OperationView

LIST_COLUMNS = [("ID", "id"), ("KIND", "kind"), ("HOST", "host"), ("STATUS", "status"), ("MOVES", "moves_summary"),
                ("REQUESTED_BY", "requested_by"), ("CREATED", "created_at"), ("REASON", "reason")]
MOVE_COLUMNS = [("#", "position"), ("INSTANCE", "instance_name"), ("SOURCE", "source_host"),
                ("DEST", "dest_host"), ("STATUS", "status"), ("MIGRATION", "migration_id"),
                ("PROGRESS", "progress"), ("REASON", "reason")]
# `operation show`: where the plan first put each move, beside where it went.
SHOW_COLUMNS = MOVE_COLUMNS[:3] + [("PLANNED", "planned_dest")] + MOVE_COLUMNS[3:]


def _moves_summary(view: OperationView) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(view.counts.items())) or "none"


class _Row:
    """A view as a table row with computed columns."""

    def __init__(self, data: dict):
        self._data = data

    def to_dict(self) -> dict:
        return self._data


def _move_rows(view: OperationView) -> list[_Row]:
    rows = []
    for move in view.moves:
        data = move.to_dict()
        data["progress"] = f"{move.progress * 100:.0f}%"
        rows.append(_Row(data))
    return rows


def print_operation(view: OperationView, output_format: str, events: bool = True, title: str | None = None) -> None:
    """The operation's header, its moves and (`events`) its trail."""
    if output_format == "json":
        click.echo(json.dumps(view.to_dict(), indent=2, default=str))
        return
    title = title or (f"operation {view.id}" if view.id is not None else "plan (dry run)")
    arguments = view.arguments
    extra = []
    if arguments.get("to"):
        extra.append("to " + ",".join(arguments["to"]))
    if arguments.get("parallel"):
        extra.append(f"parallel {arguments['parallel']}")
    status = "" if title.startswith("plan") and view.id is None else f" {view.status}"
    click.echo(f"{title}: {_what(view)}{status}"
               + (f" ({'; '.join(extra)})" if extra else ""))
    if view.reason and view.id is not None:
        click.echo(f"  {view.reason}")
    elif view.id is None:
        placed = len(view.moves) - view.counts.get("skipped", 0)
        click.echo(f"  {placed} of {len(view.moves)} instance(s) placed"
                   + ("; nothing changed (dry run)" if title.startswith("plan (dry") else ""))
    emit("table", _move_rows(view), SHOW_COLUMNS if view.id is not None and events else MOVE_COLUMNS)
    if events and view.events:
        click.echo("events:")
        for event in view.events:
            click.echo(f"  {event.at}  {event.kind:<16} {event.message}")


class OperationProgress:
    """On a terminal (stderr), a live table of the moves and an overall bar;
    elsewhere a line per move that changes status; nothing when disabled."""

    def __init__(self, enabled: bool = True):
        self.quiet = not enabled
        self.live = enabled and sys.stderr.isatty()
        self._statuses: dict[int, str] = {}
        self._live = None
        self._bar = None
        self._task = None

    def __enter__(self) -> "OperationProgress":
        if self.live:
            from rich.live import Live
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn())
            self._live = Live(console=err.real(), refresh_per_second=4, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()

    def __call__(self, view: OperationView) -> None:
        if self.quiet:
            return
        if not self.live:
            for move in view.moves:
                if self._statuses.get(move.position) != move.status:
                    self._statuses[move.position] = move.status
                    where = f" -> {move.dest_host}" if move.dest_host else ""
                    reason = f" ({move.reason})" if move.reason and move.status in ("failed", "skipped") else ""
                    click.echo(f"operation {view.id}: {move.instance_name}{where} {move.status}{reason}", err=True)
            return
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, header_style="bold")
        for header, _ in MOVE_COLUMNS:
            table.add_column(header)
        for row in _move_rows(view):
            data = row.to_dict()
            table.add_row(*(Text("" if data.get(attr) is None else str(data.get(attr))) for _, attr in MOVE_COLUMNS))
        if self._task is None:
            self._task = self._bar.add_task(f"operation {view.id} {_what(view)}", total=len(view.moves))
        self._bar.update(self._task, total=len(view.moves), completed=view.done,
                         description=f"operation {view.id} {_what(view)} {view.status}")
        self._live.update(Group(table, self._bar))


def _what(view: OperationView) -> str:
    """`drain HOST`, or the kind alone for a fleet-wide operation (no host)."""
    return f"{view.kind} {view.host}" if view.host else view.kind


def summary_line(view: OperationView) -> str:
    return f"operation {view.id}: {_what(view)} {view.status}: {view.reason or _moves_summary(view)}"


def finish(view: OperationView, output_format: str) -> None:
    """Print the outcome; a drain that did not complete exits non-zero."""
    if output_format == "json":
        click.echo(json.dumps(view.to_dict(), indent=2, default=str))
    else:
        emit("table", _move_rows(view), MOVE_COLUMNS)
        click.echo(summary_line(view))
    if view.status != "completed":
        sys.exit(1)


@click.group()
def operation() -> None:
    """Fleet operations (drains, returns, rebalances, consolidations): list, show, abort, resume."""


@operation.command("list")
@click.option("--status", default=None, help="Only operations in this status.")
@click.option("--kind", default=None, help="Only operations of this kind (drain, return, rebalance, consolidate).")
@click.option("--limit", type=bounded.LIST_LIMIT, default=50, show_default=True)
@format_option
@click.pass_obj
@handle_errors
def list_(state: State, status: str | None, kind: str | None, limit: int, output_format: str) -> None:
    """List operations, newest first."""
    views = operations.list_operations(status=status, kind=kind, limit=limit, settings=state.settings)
    if output_format == "json":
        emit("json", views, [])
        return
    rows = [_Row(dict(v.to_dict(), moves_summary=_moves_summary(v))) for v in views]
    emit("table", rows, LIST_COLUMNS)


@operation.command()
@click.argument("operation_id", type=bounded.OPERATION_ID)
@format_option
@click.pass_obj
@handle_errors
def show(state: State, operation_id: int, output_format: str) -> None:
    """The plan, each move's status, progress and reason, and the event trail."""
    print_operation(operations.show_operation(operation_id, settings=state.settings), output_format)


@operation.command()
@click.argument("operation_id", type=bounded.OPERATION_ID)
@click.option("--now", is_flag=True, help="Also abort the moves in flight (their VMs stay on their sources).")
@format_option
@click.pass_obj
@handle_errors
def abort(state: State, operation_id: int, now: bool, output_format: str) -> None:
    """Cancel the moves not started; moves in flight finish (or, --now, are aborted)."""
    view = operations.abort_operation(state.context(), operation_id, now=now, settings=state.settings)
    if output_format == "json":
        click.echo(json.dumps(view.to_dict(), indent=2, default=str))
    else:
        out.print(f"operation {operation_id}: abort requested"
                  + (" (moves in flight are aborted too)" if now else " (moves in flight finish)"), markup=False)


@operation.command()
@click.argument("operation_id", type=bounded.OPERATION_ID)
@click.option("--no-wait", is_flag=True, help="With ZooKeeper: return once it is handed to the conductors.")
@format_option
@click.pass_obj
@handle_errors
def resume(state: State, operation_id: int, no_wait: bool, output_format: str) -> None:
    """Continue an interrupted operation from its persisted flow."""
    with outcome_reported_here(), OperationProgress(enabled=output_format == "table") as progress:
        view = operations.resume_operation(state.context(), operation_id, wait=not no_wait,
                                           settings=state.settings, progress=progress)
    if no_wait:
        print_operation(view, output_format, events=False)
        return
    finish(view, output_format)
