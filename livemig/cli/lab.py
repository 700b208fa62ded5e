"""`livemig lab up|down|status`: a throwaway local cloud (root)."""
from __future__ import annotations

import json

import click

from livemig.cli.common import State, err, handle_errors, out
from livemig.lab.lab import Lab, LabConfig


def _lab() -> Lab:
    return Lab(LabConfig.from_env(), say=lambda s: err.print(f"lab: {s}"))


@click.group()
def lab() -> None:
    """A local lab: N libvirt hosts, a bridge, an iSCSI volume, tiny guests."""


@lab.command()
@click.option("--hosts", type=click.IntRange(2, 9), default=2, show_default=True)
@click.option("--guests", type=click.IntRange(0, 20), default=1, show_default=True)
@click.option("--local-disk-guests", type=click.IntRange(0, 20), default=0, show_default=True,
              help="Guests more, each with a local qcow2 disk in its host's private image directory (they "
                   "migrate with --copy-storage).")
@click.option("--tls", is_flag=True, help="A CA and per-host certificates, so that `migrate --tls` works "
              "between the lab's hosts.")
@click.pass_obj
@handle_errors
def up(state: State, hosts: int, guests: int, local_disk_guests: int, tls: bool) -> None:
    """Build the lab (replacing any earlier one) and register its hosts."""
    state.context().require_admin("building the lab")
    lab_state = _lab().up(hosts, guests, settings=state.settings, local_disk_guests=local_disk_guests, tls=tls)
    for host in lab_state["hosts"]:
        out.print(f"host  {host['name']}  {host['uri']}")
    for guest in lab_state["guests"]:
        out.print(f"guest {guest['name']}  {guest['ip']}  on {lab_state['hosts'][0]['name']}")


@lab.command()
@click.pass_obj
@handle_errors
def down(state: State) -> None:
    """Remove every process, bridge and file the lab created."""
    state.context().require_admin("removing the lab")
    _lab().down(settings=state.settings)


@lab.command()
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table")
@handle_errors
def status(output_format: str) -> None:
    """What the lab runs."""
    st = _lab().status()
    if output_format == "json":
        click.echo(json.dumps(st, indent=2))
        return
    if not st["up"]:
        out.print("lab is down")
        return
    out.print(f"bridge {st['bridge']}  iSCSI target {'running' if st['tgtd'] else 'DOWN'}")
    for h in st["hosts"]:
        out.print(f"host  {h['name']:<6} {h['uri']:<36} {'up' if h['daemon'] else 'DOWN':<5} "
                  f"domains: {', '.join(h['domains']) or '-'}")
    for g in st["guests"]:
        out.print(f"guest {g['name']:<6} {g['ip']:<15} on {', '.join(g['running_on']) or 'no host'}  "
                  f"echo {'answers' if g['echo'] else 'SILENT'}")
