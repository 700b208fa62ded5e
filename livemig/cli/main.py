"""`livemig`: the command line, a thin layer over livemig.api."""
from __future__ import annotations

import logging
import os
import sys

import click

from livemig import api
from livemig.cli.common import Duration, State, emit, format_option, handle_errors
from livemig.cli.credential import credential
from livemig.cli.fleet import consolidate, rebalance
from livemig.cli.host import host
from livemig.cli.instance import instance
from livemig.cli.migration import migrate, migration
from livemig.cli.operation import operation
from livemig.cli.policy import policy
from livemig.cli.reconcile import reconcile


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db-url", envvar="LIVEMIG_DATABASE_URL", default=None,
              help="Database URL (default: SQLite under ~/.local/share/livemig).")
@click.option("--debug", is_flag=True, help="Log every step and show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, debug: bool) -> None:
    """livemig: live-migrate VMs between KVM/libvirt hosts, safely and resumably."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not debug:
        # TaskFlow logs every failure with a traceback; livemig reports it once.
        logging.getLogger("taskflow").setLevel(logging.CRITICAL)
        # kazoo narrates every reconnect attempt; a failure is reported once, by us.
        logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    ctx.obj = State(db_url, debug)


@cli.command()
@click.argument("host_name", required=False)
@click.option("--window", "window_s", type=Duration(), default="1h", show_default=True,
              help="Measured load over this long before now (90s, 30m, 1h, 2d).")
@format_option
@click.pass_obj
@handle_errors
def resources(state: State, host_name: str | None, window_s: float, output_format: str) -> None:
    """Totals and per-project usage of one host or all: allocated (vcpus,
    memory MB, disk GB) and measured over the window (CPU cores and memory
    MiB in use, mean and peak; empty where nothing was sampled: see
    `livemig host sync --stats`)."""
    lines = api.host_resources(host_name, window_s=window_s, settings=state.settings)
    emit(output_format, lines, [("KIND", "kind"), ("HOST", "host"), ("PROJECT", "project"), ("VCPUS", "vcpus"),
                                ("MEMORY_MB", "memory_mb"), ("DISK_GB", "disk_gb"), ("CPU_MEAN", "cpu_mean"),
                                ("CPU_PEAK", "cpu_peak"), ("MEM_MEAN_MB", "memory_mean_mb"),
                                ("MEM_PEAK_MB", "memory_peak_mb")])


cli.add_command(migrate)
cli.add_command(migration)
cli.add_command(host)
cli.add_command(instance)
cli.add_command(reconcile)
cli.add_command(operation)
cli.add_command(policy)
cli.add_command(rebalance)
cli.add_command(consolidate)


cli.add_command(credential)

from livemig.cli.conductor import conductor  # noqa: E402
from livemig.cli.lab import lab  # noqa: E402

cli.add_command(lab)
cli.add_command(conductor)


def main() -> None:
    try:
        result = cli.main(prog_name="livemig", standalone_mode=False)
        code = result if isinstance(result, int) else 0  # `--help` returns its exit code
    except click.UsageError as exc:
        # Click's own report is usage, a hint and the error over four lines.
        where = exc.ctx.command_path if exc.ctx is not None else "livemig"
        click.echo(f"livemig: error: {' '.join(exc.format_message().split())} (see `{where} --help`)", err=True)
        code = exc.exit_code
    except click.ClickException as exc:
        click.echo(f"livemig: error: {' '.join(exc.format_message().split())}", err=True)
        code = exc.exit_code
    except click.Abort:
        click.echo("livemig: interrupted", err=True)
        code = 130
    except SystemExit as exc:  # handle_errors reports an error and exits this way
        code = exc.code
    _exit(code)


def _exit(code: int | str | None) -> None:
    """Exit without tearing down the interpreter: finalizing SQLAlchemy,
    TaskFlow and libvirt-python costs ~0.1 s, a twentieth of a migration
    command. Nothing is pending by now: every transaction is committed, and
    each command has joined the threads it started (a conductor has also
    handed back its jobs and closed its ZooKeeper session). The OS closes
    sockets and files; a poster's ZooKeeper session, which owns no ephemeral
    node, simply expires."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 1  # e.g. stdout closed by `| head`: report as Python would
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
