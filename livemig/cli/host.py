"""`livemig host ...`"""
from __future__ import annotations

import sys

import click

from livemig import api
from livemig.cli import bounded
from livemig.cli.common import State, emit, emit_one, format_option, handle_errors, out

HOST_COLUMNS = [("NAME", "name"), ("URI", "uri"), ("ZONE", "zone"), ("ENABLED", "enabled"),
                ("MAINTENANCE", "maintenance_text"), ("STANDBY", "standby_text"), ("VCPUS", "vcpus"),
                ("MEMORY_MB", "memory_mb"), ("DISK_GB", "disk_gb"), ("MAX_MIGRATIONS", "max_concurrent_migrations"),
                ("SHARED_PATHS", "shared_paths"), ("MIGRATION_ADDRESS", "migration_address"),
                ("LAST_SEEN", "last_seen")]

SHARED_PATH_HELP = ("A directory or block device this host shares with the others (repeatable): a file or "
                    "block disk under it migrates only if the destination shares it too.")
MIGRATION_ADDRESS_HELP = ("The address of this host's migration network (an IP address or host name): "
                          "migrations to it send their stream there instead of to its URI's address.")
TLS_NAME_HELP = ("The name this host's migration TLS certificate carries, if it does not name the migration "
                 "address.")


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
@click.option("--migration-address", metavar="ADDRESS", default=None, help=MIGRATION_ADDRESS_HELP)
@click.option("--migration-tls-name", metavar="NAME", default=None, help=TLS_NAME_HELP)
@format_option
@click.pass_obj
@handle_errors
def add(state: State, name: str, uri: str, zone: str, max_migrations: int, cpu_ratio: float, ram_ratio: float,
        disk_ratio: float, shared_paths: tuple[str, ...], migration_address: str | None,
        migration_tls_name: str | None, output_format: str) -> None:
    """Register host NAME (it must answer at URI)."""
    view = api.add_host(state.context(), name, uri, zone, max_concurrent_migrations=max_migrations,
                        cpu_allocation_ratio=cpu_ratio, ram_allocation_ratio=ram_ratio,
                        disk_allocation_ratio=disk_ratio, shared_paths=shared_paths,
                        migration_address=migration_address, migration_tls_name=migration_tls_name,
                        settings=state.settings)
    emit_hosts(output_format, [view])


@host.command("set")
@click.argument("name")
@click.option("--shared-path", "shared_paths", multiple=True, metavar="PATH", help=SHARED_PATH_HELP)
@click.option("--no-shared-paths", is_flag=True, help="NAME shares no storage with the others.")
@click.option("--migration-address", metavar="ADDRESS", default=None, help=MIGRATION_ADDRESS_HELP)
@click.option("--migration-tls-name", metavar="NAME", default=None, help=TLS_NAME_HELP)
@click.option("--no-migration-network", is_flag=True,
              help="Migrations to NAME use its URI's address (and no TLS name).")
@format_option
@click.pass_obj
@handle_errors
def set_(state: State, name: str, shared_paths: tuple[str, ...], no_shared_paths: bool,
         migration_address: str | None, migration_tls_name: str | None, no_migration_network: bool,
         output_format: str) -> None:
    """Change host NAME: its shared paths replace the ones it had; a
    migration address or TLS name given replaces the one it had."""
    if no_shared_paths and shared_paths:
        raise click.UsageError("give either --shared-path PATH (repeatable) or --no-shared-paths")
    network = migration_address is not None or migration_tls_name is not None
    if no_migration_network and network:
        raise click.UsageError("give either --migration-address/--migration-tls-name or --no-migration-network")
    if not (shared_paths or no_shared_paths or network or no_migration_network):
        raise click.UsageError("nothing to change: give --shared-path PATH (repeatable), --no-shared-paths, "
                               "--migration-address ADDRESS, --migration-tls-name NAME or --no-migration-network")
    # Both checked before either is written: bad input changes nothing.
    if network:
        from livemig.migration_network import checked_host_address

        checked_host_address(migration_address)
        checked_host_address(migration_tls_name, "TLS name")
    view = None
    if shared_paths or no_shared_paths:
        view = api.set_host_shared_paths(state.context(), name, shared_paths, settings=state.settings)
    if network or no_migration_network:
        # The one of the two not given keeps its value.
        current = next((h for h in api.list_hosts(settings=state.settings) if h.name == name), None)
        if current is not None and not no_migration_network:
            migration_address = current.migration_address if migration_address is None else migration_address
            migration_tls_name = current.migration_tls_name if migration_tls_name is None else migration_tls_name
        view = api.set_host_migration_network(state.context(), name, migration_address, migration_tls_name,
                                              settings=state.settings)
    emit_hosts(output_format, [view])


@host.command("list")
@format_option
@click.pass_obj
@handle_errors
def list_(state: State, output_format: str) -> None:
    """List hosts (in maintenance or standby: since when, and why)."""
    emit_hosts(output_format, api.list_hosts(settings=state.settings))


@host.command()
@click.argument("name")
@format_option
@click.pass_obj
@handle_errors
def show(state: State, name: str, output_format: str) -> None:
    """Host NAME: its capacity, limits, and whether it is disabled, in maintenance or in standby (and why)."""
    view = api.show_host(name, settings=state.settings)
    emit_one(output_format, _HostRow(view), HOST_FIELDS)


HOST_FIELDS = [("name", "name"), ("uri", "uri"), ("zone", "zone"), ("enabled", "enabled_text"),
               ("maintenance", "maintenance_text"), ("standby", "standby_text"), ("standby_since", "standby_since"),
               ("vcpus", "vcpus"), ("memory_mb", "memory_mb"), ("disk_gb", "disk_gb"),
               ("max_migrations", "max_concurrent_migrations"), ("shared_paths", "shared_paths"),
               ("migration_address", "migration_address"), ("migration_tls_name", "migration_tls_name"),
               ("last_seen", "last_seen")]


def emit_hosts(output_format: str, views: list) -> None:
    """Hosts as a table (with the maintenance and standby reasons) or as JSON (the views as they are)."""
    if output_format == "json":
        emit(output_format, views, HOST_COLUMNS)
        return
    emit(output_format, [_HostRow(v) for v in views], HOST_COLUMNS)


class _HostRow:
    """A host view with its states as words: `yes: why (since when)` or `no`."""

    def __init__(self, view):
        self._view = view

    def to_dict(self) -> dict:
        data = self._view.to_dict()
        data["maintenance_text"] = (f"yes: {data['maintenance_reason'] or 'no reason given'}"
                                    if data.get("maintenance") else "no")
        data["standby_text"] = (f"yes: {data['standby_reason'] or 'no reason given'}"
                                if data.get("standby") else "no")
        data["enabled_text"] = ("yes" if data.get("enabled")
                                else f"no: {data.get('disabled_reason') or 'no reason given'}")
        return data


@host.command()
@click.argument("name")
@format_option
@click.pass_obj
@handle_errors
def wake(state: State, name: str, output_format: str) -> None:
    """Bring NAME back from standby (where a consolidation put it): it takes placements again."""
    from livemig.errors import HostNotFound, InvalidInput
    from livemig.operations import api as operations

    try:
        view = operations.wake_host(state.context(), name, settings=state.settings)
    except HostNotFound as exc:
        # A name the operator typed that is not a host is bad input (exit 2),
        # like a host that is not in standby.
        raise InvalidInput(str(exc)) from exc
    if output_format == "json":
        emit("json", [view], HOST_COLUMNS)
    else:
        out.print(f"host {name} woken: it takes placements again", markup=False)


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
@click.option("--stats", is_flag=True, help="Then sample the load too: two readings of the hypervisor's "
              "counters --settle apart, written as load samples.")
@click.option("--settle", "settle_s", type=click.FloatRange(0.1, 600.0), default=1.0, show_default=True,
              help="Seconds between the two readings of --stats.")
@click.pass_obj
@handle_errors
def sync(state: State, name: str | None, stats: bool, settle_s: float) -> None:
    """Discover the domains on NAME (or every host) and update the instances."""
    for host_name, count in api.sync_hosts(state.context(), name, settings=state.settings).items():
        out.print(f"{host_name}: {count} instance(s)", markup=False)
    if not stats:
        return
    report = api.sample_load(state.context(), name, settle_s=settle_s, settings=state.settings)
    for host_name, count in sorted(report.written.items()):
        out.print(f"{host_name}: {count} load sample(s)", markup=False)
    for host_name, why in sorted(report.skipped.items()):
        click.echo(f"livemig: warning: {host_name}: no load sample: {why}", err=True)
    if report.skipped:
        sys.exit(1)


# -- drain / undrain (fleet operations: livemig.operations) ------------------------------------------

@host.command()
@click.argument("name")
@click.option("--to", "to", multiple=True, metavar="HOST", help="Only these destinations (repeatable).")
@click.option("--parallel", type=int, default=None, help="At most N moves in flight at once (default: as many "
              "as the hosts' limits allow).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Show the plan; change nothing.")
@click.option("--reason", default=None, help="Why (shown in `host list`).")
@click.option("--no-wait", is_flag=True, help="With ZooKeeper: return once the operation is posted.")
@click.option("--policy", default=None, metavar="NAME",
              help="The migration policy of every move (default: each instance's, by the policy rules).")
@format_option
@click.pass_obj
@handle_errors
def drain(state: State, name: str, to: tuple[str, ...], parallel: int | None, yes: bool, dry_run: bool,
          reason: str | None, no_wait: bool, policy: str | None, output_format: str) -> None:
    """Empty host NAME: maintenance, a plan, then live migrations of its instances."""
    import sys

    from livemig.cli.operation import OperationProgress, finish, print_operation
    from livemig.errors import InvalidInput
    from livemig.operations import api as operations

    context = state.context()
    plan = operations.drain_host(context, name, to=to, parallel=parallel, reason=reason, dry_run=True,
                                 wait=not no_wait, settings=state.settings, policy=policy)
    if dry_run:
        print_operation(plan, output_format)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidInput(f"draining {name} moves {len(plan.moves)} instance(s): pass --yes to confirm "
                               f"(not a terminal, cannot ask)")
        print_operation(plan, "table", title="plan")
        if not click.confirm(f"Put {name} in maintenance and move these instances?", default=False):
            out.print("nothing changed", markup=False)
            return
    elif output_format == "table":
        print_operation(plan, "table", title="plan")
    from livemig.cli.common import outcome_reported_here

    # Each move's outcome is shown by the progress (not also as a log line).
    with outcome_reported_here(), OperationProgress(enabled=output_format == "table") as progress:
        view = operations.drain_host(context, name, to=to, parallel=parallel, reason=reason, wait=not no_wait,
                                     settings=state.settings, progress=progress, policy=policy)
    if no_wait:
        print_operation(view, output_format, events=False)
        return
    finish(view, output_format)


@host.command()
@click.argument("name")
@click.option("--return", "return_instances", is_flag=True,
              help="Move the instances its last drain moved back to it (an operation of its own).")
@click.option("--parallel", type=int, default=None, help="At most N moves in flight at once.")
@click.option("--yes", "-y", is_flag=True, help="With --return: do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Show what would change (with --return, the plan); change nothing.")
@click.option("--no-wait", is_flag=True, help="With ZooKeeper: return once the operation is posted.")
@format_option
@click.pass_obj
@handle_errors
def undrain(state: State, name: str, return_instances: bool, parallel: int | None, yes: bool, dry_run: bool,
            no_wait: bool, output_format: str) -> None:
    """End NAME's maintenance; with --return, move its drained instances back."""
    import sys

    from livemig.cli.operation import OperationProgress, finish, print_operation
    from livemig.errors import InvalidInput
    from livemig.operations import api as operations

    if dry_run or (return_instances and not yes):
        # Moving VMs back is a fleet operation like the drain: its plan is
        # shown and confirmed the same way.
        plan = operations.undrain_host(state.context(), name, return_instances=return_instances,
                                       parallel=parallel, wait=not no_wait, dry_run=True, settings=state.settings)
        if dry_run:
            if plan.operation is not None:
                print_operation(plan.operation, output_format)
            elif output_format == "json":
                emit("json", [plan.host], HOST_COLUMNS)
            else:
                out.print(f"host {name}: maintenance would end (dry run; nothing changed)", markup=False)
            return
        moving = len(plan.operation.moves) - plan.operation.counts.get("skipped", 0)
        if not sys.stdin.isatty():
            raise InvalidInput(f"undrain --return moves {moving} instance(s) back to {name}: pass --yes to "
                               f"confirm (not a terminal, cannot ask)")
        print_operation(plan.operation, "table", title="plan")
        if not click.confirm(f"End {name}'s maintenance and move these instances back?", default=False):
            out.print("nothing changed", markup=False)
            return
    from livemig.cli.common import outcome_reported_here

    with outcome_reported_here(), OperationProgress(enabled=output_format == "table" and return_instances) \
            as progress:
        view = operations.undrain_host(state.context(), name, return_instances=return_instances,
                                       parallel=parallel, wait=not no_wait, settings=state.settings,
                                       progress=progress)
    if output_format == "table":
        out.print(f"host {name}: maintenance ended", markup=False)
    if view.operation is None:
        if output_format == "json":
            emit("json", [view.host], HOST_COLUMNS)
        return
    if no_wait:
        from livemig.cli.operation import print_operation

        print_operation(view.operation, output_format, events=False)
        return
    finish(view.operation, output_format)
