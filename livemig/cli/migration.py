"""`livemig migrate --live ...` and `livemig migration ...`"""
from __future__ import annotations

import dataclasses
import json

import click

from livemig import api
from livemig.cli import bounded
from livemig.cli.common import State, emit, emit_one, format_option, handle_errors, out, outcome_reported_here
from livemig.cli.migration_flags import flag_options, migration_option_flags
from livemig.cli.progress import MigrationProgress
from livemig.errors import InvalidInput, MigrationFailed
from livemig.scheduler.select import Selection
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
               ("reason", "error_reason"), ("scheduled", "scheduled"), ("policy", "policy"),
               ("phase", "phase_summary"), ("throttle %", "throttle_pct"), ("post-copy requests", "postcopy_requests")]


def _report(view: MigrationView, output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps(view.to_dict(), indent=2, default=str))
        return
    downtime = f", downtime {view.downtime_ms} ms" if view.downtime_ms is not None else ""
    took = f" in {view.duration_s:.2f} s" if view.duration_s is not None else ""
    # Plain text: rich would read brackets in an instance name as markup.
    click.echo(f"migration {view.id}: {view.instance_name} {view.source_host} -> {view.dest_host} "
               f"{view.status}{took}{downtime}")


FORMS = ("livemig migrate --live INSTANCE (livemig chooses the destination), "
         "livemig migrate --live INSTANCE --to HOST, or livemig migrate --live SRC INSTANCE DST")


def _parse_forms(arguments: tuple[str, ...], to: str | None) -> tuple[str | None, str, str | None]:
    """(source, instance, dest) from the positional arguments: one (INSTANCE)
    or three (SRC INSTANCE DST), told apart by their count alone."""
    if len(arguments) == 1:
        return None, arguments[0], None
    if len(arguments) == 3:
        if to is not None:
            raise InvalidInput(f"--to and a DST argument both name the destination; use one ({FORMS})")
        return arguments[0], arguments[1], arguments[2]
    given = "no arguments" if not arguments else f"{len(arguments)} arguments"
    raise InvalidInput(f"migrate takes INSTANCE or SRC INSTANCE DST, not {given}: {FORMS}")


def _report_choice(name: str, source: str, selection: Selection, weigher: str, explicit: str | None,
                   output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps({
            "instance": name, "instance_uuid": selection.instance, "source": source, "chosen": selection.chosen,
            "ranked": list(selection.ranked), "weigher": None if explicit else weigher,
            "refusals": [dataclasses.asdict(r) for r in selection.refusals]}, indent=2))
        return
    how = f"--to {explicit}" if explicit else f"weigher {weigher}"
    if selection.chosen is not None:
        click.echo(f"{name}: {source} -> {selection.chosen} (dry run, {how}; nothing changed)")
    else:
        click.echo(f"{name}: on {source}, no host can take it (dry run, {how}; nothing changed)")
    others = selection.ranked[1:]
    if others:
        click.echo(f"  also possible, in order: {', '.join(others)}")
    for line in selection.explain():
        click.echo(f"  {line}")


@click.command()
@click.option("--live", is_flag=True, help="Live migration (the only kind livemig does; required).")
@click.option("--to", "to", metavar="HOST", default=None,
              help="The destination (checked by the scheduler's filters; never retried elsewhere).")
@click.option("--dry-run", is_flag=True,
              help="Print the destination livemig would choose and, per other host, why it was refused; "
                   "change nothing.")
@click.option("--weigher", type=click.Choice(["spread", "pack"]), default=None,
              help="How the scheduler ranks hosts (default: the weigher setting).")
@click.option("--no-wait", is_flag=True,
              help="With ZooKeeper: return once the migration is recorded and posted (it still queues for busy "
                   "hosts); follow it with `livemig migration show`.")
@click.option("--no-queue", is_flag=True, help="Fail at once if a host is busy instead of waiting in `queued`.")
@click.option("--quiet", "-q", is_flag=True, help="Print the result only (no progress bar or status lines).")
@click.option("--policy", default=None, metavar="NAME",
              help="The migration policy (`livemig policy list`; default: the one its rules choose).")
@migration_option_flags
@format_option
@click.argument("arguments", nargs=-1, metavar="INSTANCE | SRC INSTANCE DST")
@click.pass_obj
@handle_errors
def migrate(state: State, live: bool, to: str | None, dry_run: bool, weigher: str | None, no_wait: bool,
            no_queue: bool, quiet: bool, policy: str | None, output_format: str, arguments: tuple[str, ...],
            **flags: object) -> None:
    """Live-migrate INSTANCE (name or uuid) off the host it runs on.

    \b
    livemig migrate --live INSTANCE            livemig chooses the destination
    livemig migrate --live INSTANCE --to HOST  to HOST
    livemig migrate --live SRC INSTANCE DST    SRC must be the instance's host

    A destination livemig chose that fails before switchover is replaced by
    the next best host (up to the max_retries setting); a named one is not.
    The options given here override the policy's, for this migration only."""
    if not live:
        raise InvalidInput("only live migration is supported: pass --live")
    source, instance, dest = _parse_forms(arguments, to)
    options = flag_options(flags)
    if dry_run:
        if dest is not None:
            to = dest
        weigher = weigher or state.settings.weigher
        # Read-only: prechecks and the inventory only, no admin rights needed.
        selection = api.choose_destination(instance, to, source=source, weigher=weigher, settings=state.settings)
        shown = api.list_instances(settings=state.settings)
        view = next((i for i in shown if i.uuid == selection.instance), None)
        name = view.name if view is not None else instance
        on = view.host if view is not None and view.host else (source or "?")
        _report_choice(name, on, selection, weigher, to, output_format)
        if selection.chosen is None:
            raise api.no_valid_host(name, selection)
        return
    if no_wait and not state.settings.zookeeper_hosts:
        # Without conductors the flow runs in this process: nothing would run it after we return.
        raise InvalidInput("--no-wait needs ZooKeeper and a conductor; without them the migration runs in this "
                           "command")
    with outcome_reported_here(), MigrationProgress(enabled=not quiet and output_format == "table") as progress:
        try:
            view = api.migrate(state.context(), instance, source, dest, to=to, wait=not no_wait,
                               queue=not no_queue, settings=state.settings, progress=progress, weigher=weigher,
                               policy=policy, options=options)
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
    if view.options:
        # Plain text: one line, the options the migration ran with.
        click.echo(f"{'options':<20} " + " ".join(f"{name}={_shown(value)}" for name, value in view.options.items()))
    for attempt in view.attempts:
        reason = f": {attempt['reason']}" if attempt.get("reason") else ""
        # Plain text: rich would read brackets in a reason as markup.
        click.echo(f"{'attempt ' + str(attempt.get('attempt')):<20} {attempt.get('host')} "
                   f"{attempt.get('outcome')}{reason}")
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


@migration.command("force-complete")
@click.argument("migration_id", type=bounded.MIGRATION_ID)
@click.pass_obj
@handle_errors
def force_complete(state: State, migration_id: int) -> None:
    """Complete a running migration now: switch to post-copy if its policy
    allows it, else pause the guest until the copy finishes."""
    view = api.force_complete(state.context(), migration_id, settings=state.settings)
    how = "post-copy" if view.options.get("post_copy", "off") != "off" else "pausing the guest"
    out.print(f"migration {migration_id}: force-complete requested ({how})", markup=False)


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if value == "" else str(value)
