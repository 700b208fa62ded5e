"""What every CLI command shares: settings, the caller's context, output and errors."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from typing import Any, Callable, Iterable, Iterator, Sequence

import click

from livemig.config import Settings, load_settings
from livemig.context import RequestContext, context_from_local_user
from livemig.errors import LivemigError


class LazyConsole:
    """rich's Console, made on first use: importing rich costs about 20 ms
    of a command's start, and a command that prints no table or progress
    bar (a migration run by a script) does not need it."""

    def __init__(self, **kwargs: Any):
        self._kwargs = kwargs
        self._console = None

    def real(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


# Piped output keeps whole lines (no 80-column truncation) for grep and logs.
out = LazyConsole(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
err = LazyConsole(stderr=True, soft_wrap=True)

class Duration(click.ParamType):
    """Seconds, written as a number of seconds or with a unit: 90, 90s, 30m, 1h, 2d."""

    name = "duration"
    UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        scale = self.UNITS.get(text[-1:], None)
        number = text[:-1] if scale is not None else text
        try:
            seconds = float(number) * (scale or 1.0)
        except ValueError:
            self.fail(f"{value!r} is not a duration (seconds, or a number with s, m, h or d)", param, ctx)
        if not seconds > 0 or seconds == float("inf"):
            self.fail(f"{value!r} is not a positive duration", param, ctx)
        return seconds


format_option = click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="Human table, or JSON for scripts.")


class State:
    """Built once per invocation from the global options."""

    def __init__(self, database_url: str | None, debug: bool):
        self._database_url = database_url
        self.debug = debug
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(database_url=self._database_url)
        return self._settings

    def context(self) -> RequestContext:
        return context_from_local_user(self.settings.admin_group)


class _DropOutcomeLogs(logging.Filter):
    """A migration's outcome is logged (with `migration_outcome`) for a
    conductor's log; a command that prints the outcome itself would otherwise
    show the reason twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not hasattr(record, "migration_outcome")


@contextlib.contextmanager
def outcome_reported_here() -> Iterator[None]:
    handlers = list(logging.getLogger().handlers)
    drop = _DropOutcomeLogs()
    for handler in handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)


def handle_errors(fn: Callable) -> Callable:
    """One clear line on stderr and the error's documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LivemigError as exc:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            click.echo(f"livemig: error: {message}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            # A file or socket problem (permissions, a full disk): one line too.
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            click.echo(f"livemig: error: {exc.strerror or exc}{where}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("livemig: interrupted", err=True)
            sys.exit(130)

    return wrapper


def emit(output_format: str, rows: Sequence[Any], columns: Iterable[tuple[str, str]], title: str | None = None) -> None:
    """Print views as a table (the given columns) or as JSON (everything)."""
    if output_format == "json":
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=title, show_lines=False, box=None, header_style="bold")
    columns = list(columns)
    for header, _ in columns:
        table.add_column(header)
    for row in rows:
        data = row.to_dict()
        table.add_row(*(_plain(data.get(attr)) for _, attr in columns))
    out.print(table)


def emit_one(output_format: str, view: Any, fields: Iterable[tuple[str, str]]) -> None:
    if output_format == "json":
        click.echo(json.dumps(view.to_dict(), indent=2, default=str))
        return
    from rich.text import Text

    data = view.to_dict()
    for label, attr in fields:
        # A field may be a view's property (a summary of other fields).
        value = data[attr] if attr in data else getattr(view, attr, None)
        out.print(Text.assemble((f"{label:<20}", "bold"), " ", _plain(value)))


def _plain(value: Any):
    """A value as literal text: names and reasons come from operators and
    hypervisors, and rich would read `[/x]` in them as (broken) markup."""
    from rich.text import Text

    return Text("" if value is None else str(value))
