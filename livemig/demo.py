"""`make demo`: from nothing to a guest live-migrated between two libvirt
hosts and back, with a TCP client connected throughout, and the measured
downtime printed. Builds the lab, runs the real CLI, removes the lab
(LIVEMIG_DEMO_KEEP=1 keeps it for exploring)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

from livemig.config import load_settings
from livemig.lab.echo import EchoStream, ask
from livemig.lab.lab import Lab, LabConfig

console = Console()


def livemig(*args: str, show: bool = True) -> subprocess.CompletedProcess:
    if show:
        console.print(f"[bold]$ livemig {' '.join(args)}[/bold]")
    proc = subprocess.run([sys.executable, "-m", "livemig.cli", *args], capture_output=True, text=True)
    if show and proc.stdout.strip():
        sys.stdout.write(proc.stdout)
        sys.stdout.flush()
    if proc.returncode != 0:
        console.print(proc.stderr.rstrip(), style="red")
        raise SystemExit(proc.returncode)
    return proc


def main() -> None:
    if os.geteuid() != 0:
        console.print("the demo builds a local libvirt lab and needs root (sudo make demo)", style="red")
        raise SystemExit(2)
    settings = load_settings()
    lab = Lab(LabConfig.from_env(), say=lambda s: console.print(f"lab: {s}", style="dim"))
    keep = os.environ.get("LIVEMIG_DEMO_KEEP") == "1"
    lab.up(hosts=2, guests=1, settings=settings)
    try:
        guest = lab.state()["guests"][0]
        h1, h2 = lab.host_name(1), lab.host_name(2)
        livemig("host", "list")
        livemig("instance", "list")
        livemig("resources")
        boot_id = ask(guest["ip"], 9)
        rows = []
        with EchoStream(guest["ip"], 7, period_s=0.02) as stream:
            time.sleep(0.5)
            for src, dst in ((h1, h2), (h2, h1)):
                stream.reset_gap()
                started = time.monotonic()
                livemig("migrate", "--live", src, guest["name"], dst)
                wall = time.monotonic() - started
                time.sleep(0.3)
                newest = json.loads(livemig("migration", "list", "--limit", "1", "--format", "json",
                                             show=False).stdout)[0]
                rows.append((str(newest["id"]), f"{src} -> {dst}", f"{wall:.2f}", str(newest["downtime_ms"]),
                             f"{stream.max_gap_s * 1000:.0f}"))
            stream.settle()
        lost = stream.sent - len(stream.received)
        table = Table(title="live migrations of vm1 with a TCP echo stream every 20 ms")
        for header in ("migration", "route", "command wall s", "libvirt downtime ms", "largest client gap ms"):
            table.add_column(header)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        same_boot = ask(guest["ip"], 9) == boot_id
        console.print(f"echo lines sent {stream.sent}, lost {lost}, in order: {stream.in_order_without_loss}, "
                      f"connection kept: {stream.error is None}, guest rebooted: {not same_boot}")
    finally:
        if keep:
            console.print("lab kept (LIVEMIG_DEMO_KEEP=1); remove it with: livemig lab down")
        else:
            lab.down(settings=settings)


if __name__ == "__main__":
    main()
