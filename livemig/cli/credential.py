"""`livemig credential add USAGE`: the value of a private libvirt secret."""
from __future__ import annotations

import sys

import click

from livemig.cli.common import State, handle_errors, out
from livemig.credentials import register_credential


@click.group()
def credential() -> None:
    """Values of private disk secrets, so they can be defined on destinations."""


@credential.command("add")
@click.argument("usage")
@click.pass_obj
@handle_errors
def add(state: State, usage: str) -> None:
    """Read the value for secret USAGE from stdin (never from the command line).

    It is stored in the database, encrypted with the credential_key_file that
    every controller shares (created on first use)."""
    from livemig.api import _services

    state.context().require_admin("registering a credential")
    value = sys.stdin.buffer.read().rstrip(b"\n")
    register_credential(_services(state.settings), usage, value)
    out.print(f"credential for {usage} registered")
