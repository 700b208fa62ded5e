"""`livemig migrate --live ...` and `livemig migration ...`"""
from __future__ import annotations

import json

import click

from livemig import api
from livemig.cli import bounded
from livemig.cli.common import State, emit, emit_one, format_option, handle_errors, out, outcome_reported_here
from livemig.cli.progress import MigrationProgress
from livemig.errors import InvalidInput, MigrationFailed
from livemig.views import MigrationView

LIST_COLUMNS = [("ID", "id"), ("INSTANCE", "instance_name"), ("SOURCE", "source_host"), ("DEST", "dest_host"),
                ("STATUS", "status"), ("DOWNTIME_MS", "downtime_ms"), ("CREATED", "created_at"),
                ("REASON", "error_reason")]
SHOW_FIELDS = [("id", "id"), ("instance", "instance_name"), ("instance uuid", "instance_uuid"),
               ("source", "source_host"), ("destination", "dest_host"), ("status", "status"),
               ("progress", "progress"), ("memory total", "memory_total"), ("memory remaining", "memory_remaining"),
               ("iteration", "iteration"), ("expected downtime ms", "expected_downtime_ms"),
               ("downtime ms", "downtime_ms"), ("requested by", "requested_by"), ("created", "created_at"),
               ("started", "started_at"), ("finished", "finished_at"), ("duration s", "duration_s"),
               ("reason", "error_reason")]


def _report(view: MigrationView, output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps(view.to_dict(), indent=2, default=str))
        return
    downtime = f", downtime {view.downtime_ms} ms" if view.downtime_ms is not None else ""
    took = f" in {view.duration_s:.2f} s" if view.duration_s is not None else ""
    # Plain text: rich would read brackets in an instance name as markup.
    click.echo(f"migration {view.id}: {view.instance_name} {view.source_host} -> {view.dest_host} "
               f"{view.status}{took}{downtime}")


@click.command()
@click.option("--live", is_flag=True, help="Live migration (the only kind livemig does; required).")
@click.option("--no-wait", is_flag=True,
              help="With ZooKeeper: return once the migration is recorded and posted (it still queues for busy "
                   "hosts); follow it with `livemig migration show`.")
@click.option("--no-queue", is_flag=True, help="Fail at once if a host is busy instead of waiting in `queued`.")
@click.option("--quiet", "-q", is_flag=True, help="Print the result only (no progress bar or status lines).")
@format_option
@click.argument("source")
@click.argument("instance")
@click.argument("dest")
@click.pass_obj
@handle_errors
def migrate(state: State, live: bool, no_wait: bool, no_queue: bool, quiet: bool, output_format: str, source: str,
            instance: str, dest: str) -> None:
    """Live-migrate INSTANCE (name or uuid) from host SOURCE to host DEST."""
    if not live:
        raise InvalidInput("only live migration is supported: pass --live")
    if no_wait and not state.settings.zookeeper_hosts:
        # Without conductors the flow runs in this process: nothing would run it after we return.
        raise InvalidInput("--no-wait needs ZooKeeper and a conductor; without them the migration runs in this "
                           "command")
    with outcome_reported_here(), MigrationProgress(enabled=not quiet and output_format == "table") as progress:
        try:
            view = api.migrate(state.context(), instance, source, dest, wait=not no_wait, queue=not no_queue,
                               settings=state.settings, progress=progress)
        except MigrationFailed as exc:
            if exc.migration_id is not None and output_format == "json":
                _report(api.show_migration(exc.migration_id, settings=state.settings), output_format)
            raise
    _report(view, output_format)


@click.group()
def migration() -> None:
    """Migrations: list, show, resume, abort."""


@migration.command("list")
@click.option("--status", default=None, help="Only migrations in this status.")
@click.option("--instance", default=None, help="Only migrations of this instance (name or uuid).")
@click.option("--limit", type=bounded.LIST_LIMIT, default=50, show_default=True)
@format_option
@click.pass_obj
@handle_errors
def list_(state: State, status: str | None, instance: str | None, limit: int, output_format: str) -> None:
    """List migrations, newest first."""
    emit(output_format, api.list_migrations(status, instance, limit, settings=state.settings), LIST_COLUMNS)


@migration.command()
@click.argument("migration_id", type=bounded.MIGRATION_ID)
@format_option
@click.pass_obj
@handle_errors
def show(state: State, migration_id: int, output_format: str) -> None:
    """A migration's figures and its event trail."""
    view = api.show_migration(migration_id, settings=state.settings)
    if output_format == "json":
        click.echo(json.dumps(view.to_dict(), indent=2, default=str))
        return
    emit_one(output_format, view, SHOW_FIELDS)
    out.print()
    emit(output_format, view.events, [("AT", "at"), ("KIND", "kind"), ("NAME", "name"), ("STATE", "state"),
                                      ("MESSAGE", "message"), ("CONTROLLER", "controller")])


@migration.command()
@click.argument("migration_id", type=bounded.MIGRATION_ID)
@click.option("--quiet", "-q", is_flag=True, help="Print the result only (no progress bar or status lines).")
@format_option
@click.pass_obj
@handle_errors
def resume(state: State, migration_id: int, quiet: bool, output_format: str) -> None:
    """Resume an interrupted migration from its persisted state."""
    with outcome_reported_here(), MigrationProgress(enabled=not quiet and output_format == "table") as progress:
        view = api.resume(state.context(), migration_id, settings=state.settings, progress=progress)
    _report(view, output_format)


@migration.command()
@click.argument("migration_id", type=bounded.MIGRATION_ID)
@click.pass_obj
@handle_errors
def abort(state: State, migration_id: int) -> None:
    """Cancel a queued or running migration (the VM stays on its source)."""
    api.abort(state.context(), migration_id, settings=state.settings)
    out.print(f"migration {migration_id}: abort requested")
