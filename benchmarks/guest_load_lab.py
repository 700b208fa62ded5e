"""Benchmark: what the lab guest's control port does to the figures livemig
samples, and to the dirty rate libvirt reports.

    python -m benchmarks.guest_load_lab [--rounds 5] [--pass-s 3]

Method. A lab of 2 hosts and one TCG guest (128 MiB, 1 vCPU) on the first.
1. CPU: for the guest idle, then after `cpu on`, ROUNDS sampling passes
   (livemig.load.sampler, two readings PASS_S apart) each give the guest's
   CPU (its instance sample, in cores) and its host's own figure (cores: the
   host's busy fraction times its CPUs; on the lab this is the whole
   machine's, every lab host sharing one kernel).
2. Dirty rate: for `dirty 32` (zero-filled) and `dirtyr 16` (random), a
   livemig migration capped at 5 MiB/s is started and the source's
   `jobStats()['memory_dirty_rate']` (pages/s, 4 KiB pages) read every
   0.5 s for 45 s (QEMU measures it at the end of each pass), then the
   migration is aborted; the guest's `check` is read after `stop`.
The machine's 2 cores are shared with whatever else runs: its load average
is reported with the figures."""
from __future__ import annotations

import argparse
import os
import threading
import time

from benchmarks.common import console, summary, table, write_result
from benchmarks.downtime_vs_virsh import BENCH_LAB, lab_settings
from livemig import api
from livemig.context import admin_context
from livemig.lab.control import GuestControl
from livemig.lab.lab import Lab
from livemig.load.sampler import Sampler
from livemig.services import services_for

CTX = admin_context("benchmark")
PAGE = 4096


def cpu_figures(settings, uuid: str, host: str, pass_s: float) -> tuple[float, float]:
    """(guest cores, host cores) over one sampling pass."""
    services = services_for(settings)
    sampler = Sampler(services.db, services.drivers, settings)
    sampler.sample(settle_s=pass_s)
    from livemig.load.fleet import host_loads, instance_loads, window_start

    since, until = window_start(pass_s / 2)
    with services.db.reading() as s:
        return instance_loads(s, since, until)[uuid].cpu_mean, host_loads(s, since, until)[host].cpu_mean


def dirty_rate(lab, settings, guest: dict, control: GuestControl, mib: int, random: bool) -> dict:
    import libvirt

    source, dest = lab.host_name(1), lab.host_name(2)
    control.dirty(mib, random=random)
    time.sleep(2)
    outcome: dict = {}

    def migrate() -> None:
        try:
            outcome["status"] = api.migrate(CTX, guest["name"], source, dest, options={"bandwidth_mib_s": 5},
                                            settings=settings).status
        except Exception as exc:  # noqa: BLE001 - reported as the run's outcome
            outcome["status"] = f"{type(exc).__name__}"

    worker = threading.Thread(target=migrate, daemon=True)
    worker.start()
    conn = libvirt.open(lab.host_uri(1))
    rates = []
    try:
        dom = conn.lookupByUUIDString(guest["uuid"])
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.5)
            try:
                rates.append(dom.jobStats(0).get("memory_dirty_rate", 0))
            except libvirt.libvirtError:
                break
        if worker.is_alive():
            from livemig.persistence.models import Migration
            import sqlalchemy as sa

            with services_for(settings).db.reading() as s:
                newest = s.scalars(sa.select(Migration).order_by(Migration.id.desc())).first()
            api.abort(CTX, newest.id, settings=settings)
        worker.join(60)
    finally:
        conn.close()
    control.stop()
    reported = [r for r in rates if r]
    return {"mode": f"{'dirtyr' if random else 'dirty'} {mib}", "rates": rates,
            "max_pages_s": max(reported, default=0), "first_reported_s": (rates.index(reported[0]) + 1) * 0.5
            if reported else None, "outcome": outcome.get("status"), "check": control.check()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pass-s", type=float, default=3.0)
    args = parser.parse_args()
    with lab_settings("guest-load") as settings:
        lab = Lab(BENCH_LAB, say=lambda s: console.print(f"lab: {s}", style="dim"))
        lab.up(hosts=2, guests=1, settings=settings)
        try:
            guest = lab.state()["guests"][0]
            control = GuestControl(guest["ip"])
            cpu: dict[str, list] = {}
            for state in ("idle", "cpu on"):
                control.cpu(state == "cpu on")
                time.sleep(1)
                cpu[state] = [cpu_figures(settings, guest["uuid"], lab.host_name(1), args.pass_s)
                              for _ in range(args.rounds)]
            control.cpu(False)
            dirty = [dirty_rate(lab, settings, guest, control, 32, False),
                     dirty_rate(lab, settings, guest, control, 16, True)]
        finally:
            lab.down(settings=settings)
    load = os.getloadavg()[0]
    rows = []
    for state, figures in cpu.items():
        g, h = summary([f[0] for f in figures]), summary([f[1] for f in figures])
        rows.append((state, g["median"], g["min"], g["max"], h["median"], h["min"], h["max"]))
    table(f"CPU sampled over {args.pass_s:g} s passes, {args.rounds} rounds (load average {load:.2f})",
          ["guest", "guest cores median", "min", "max", "host cores median", "min", "max"], rows)
    table("Dirty rate libvirt reports during a 5 MiB/s migration",
          ["mode", "max pages/s", "max MiB/s", "first reported after s", "migration", "check after"],
          [(d["mode"], d["max_pages_s"], d["max_pages_s"] * PAGE / 2**20, d["first_reported_s"], d["outcome"],
            "ok" if d["check"] else "corrupt") for d in dirty])
    write_result("guest_load_lab", {"arguments": vars(args), "cpu": cpu, "dirty": dirty, "load_average": load})


if __name__ == "__main__":
    main()
