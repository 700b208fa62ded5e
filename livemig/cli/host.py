"""`livemig host ...`"""
from __future__ import annotations

import click

from livemig import api
from livemig.cli import bounded
from livemig.cli.common import State, emit, format_option, handle_errors, out

HOST_COLUMNS = [("NAME", "name"), ("URI", "uri"), ("ZONE", "zone"), ("ENABLED", "enabled"), ("VCPUS", "vcpus"),
                ("MEMORY_MB", "memory_mb"), ("DISK_GB", "disk_gb"), ("MAX_MIGRATIONS", "max_concurrent_migrations"),
                ("SHARED_PATHS", "shared_paths"), ("LAST_SEEN", "last_seen")]

SHARED_PATH_HELP = ("A directory or block device this host shares with the others (repeatable): a file or "
                    "block disk under it migrates only if the destination shares it too.")


@click.group()
def host() -> None:
    """Hypervisor hosts in the inventory."""


@host.command("add")
@click.argument("name")
@click.option("--uri", required=True, help="Driver URI, e.g. qemu+tcp://10.0.0.5/system.")
@click.option("--zone", default="default", show_default=True, help="Availability zone.")
@click.option("--max-migrations", type=bounded.MIGRATIONS_PER_HOST, default=1, show_default=True,
              help="Concurrent migrations (in plus out) this host takes part in.")
@click.option("--cpu-ratio", type=bounded.ALLOCATION_RATIO, default=4.0, show_default=True)
@click.option("--ram-ratio", type=bounded.ALLOCATION_RATIO, default=1.0, show_default=True)
@click.option("--disk-ratio", type=bounded.ALLOCATION_RATIO, default=1.0, show_default=True)
@click.option("--shared-path", "shared_paths", multiple=True, metavar="PATH", help=SHARED_PATH_HELP)
@format_option
@click.pass_obj
@handle_errors
def add(state: State, name: str, uri: str, zone: str, max_migrations: int, cpu_ratio: float, ram_ratio: float,
        disk_ratio: float, shared_paths: tuple[str, ...], output_format: str) -> None:
    """Register host NAME (it must answer at URI)."""
    view = api.add_host(state.context(), name, uri, zone, max_concurrent_migrations=max_migrations,
                        cpu_allocation_ratio=cpu_ratio, ram_allocation_ratio=ram_ratio,
                        disk_allocation_ratio=disk_ratio, shared_paths=shared_paths, settings=state.settings)
    emit(output_format, [view], HOST_COLUMNS)


@host.command("set")
@click.argument("name")
@click.option("--shared-path", "shared_paths", multiple=True, metavar="PATH", help=SHARED_PATH_HELP)
@click.option("--no-shared-paths", is_flag=True, help="NAME shares no storage with the others.")
@format_option
@click.pass_obj
@handle_errors
def set_(state: State, name: str, shared_paths: tuple[str, ...], no_shared_paths: bool, output_format: str) -> None:
    """Change host NAME: its shared paths replace the ones it had."""
    if no_shared_paths == bool(shared_paths):
        raise click.UsageError("give either --shared-path PATH (repeatable) or --no-shared-paths")
    view = api.set_host_shared_paths(state.context(), name, shared_paths, settings=state.settings)
    emit(output_format, [view], HOST_COLUMNS)


@host.command("list")
@format_option
@click.pass_obj
@handle_errors
def list_(state: State, output_format: str) -> None:
    """List hosts."""
    emit(output_format, api.list_hosts(settings=state.settings), HOST_COLUMNS)


@host.command()
@click.argument("name")
@click.pass_obj
@handle_errors
def enable(state: State, name: str) -> None:
    """Allow migrations to and from NAME."""
    api.set_host_enabled(state.context(), name, True, settings=state.settings)
    out.print(f"host {name} enabled", markup=False)


@host.command()
@click.argument("name")
@click.option("--reason", default=None, help="Why (shown in refusals).")
@click.pass_obj
@handle_errors
def disable(state: State, name: str, reason: str | None) -> None:
    """Refuse new migrations to and from NAME."""
    api.set_host_enabled(state.context(), name, False, reason, settings=state.settings)
    out.print(f"host {name} disabled", markup=False)


@host.command()
@click.argument("name", required=False)
@click.pass_obj
@handle_errors
def sync(state: State, name: str | None) -> None:
    """Discover the domains on NAME (or every host) and update the instances."""
    for host_name, count in api.sync_hosts(state.context(), name, settings=state.settings).items():
        out.print(f"{host_name}: {count} instance(s)", markup=False)
