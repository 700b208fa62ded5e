"""`livemig instance ...`"""
from __future__ import annotations

import click

from livemig import api
from livemig.cli.common import State, emit, format_option, handle_errors


@click.group()
def instance() -> None:
    """Instances (VMs) as discovered on the hosts."""


@instance.command("list")
@click.option("--host", "host_name", default=None, help="Only instances on this host.")
@click.option("--all", "include_deleted", is_flag=True, help="Include deleted instances.")
@format_option
@click.pass_obj
@handle_errors
def list_(state: State, host_name: str | None, include_deleted: bool, output_format: str) -> None:
    """List instances."""
    rows = api.list_instances(host_name, include_deleted, settings=state.settings)
    emit(output_format, rows, [("UUID", "uuid"), ("NAME", "name"), ("PROJECT", "project"), ("HOST", "host"),
                               ("STATE", "state"), ("VCPUS", "vcpus"), ("MEMORY_MB", "memory_mb"),
                               ("DISK_GB", "disk_gb")])
