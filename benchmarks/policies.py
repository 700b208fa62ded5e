"""Benchmark: convergence policies on a busy guest.

    python -m benchmarks.policies [--rounds 3] [--bandwidth 10] [--timeout 30]

Method. A lab of 2 hosts and one TCG guest (128 MiB, 1 vCPU) that rewrites
16 MiB of random data over and over (`dirtyr 16` on its control port; random,
not zeros: NOTES records TCG corrupting zero-rewriting guests that pre-copy
converges). Per round each policy migrates the guest once, away from where
it is, over a link capped at BANDWIDTH MiB/s (a pass leaves more dirty than
fits the 300 ms allowed downtime), while a client keeps a TCP echo stream to
the guest (a line every 20 ms):
- plain: pre-copy, aborted at TIMEOUT s;
- auto-converge: 60 % throttle, 20 more each pass;
- post-copy: switch after the first pass;
- pause-to-complete: pre-copy, forced at 10 s by pausing the guest
  (timeout_action force-complete, no post-copy).
Figures per policy: completion rate, the migration's wall time (livemig's
record: created to finished), the downtime libvirt reports (after post-copy,
from the source's job-completed event), the largest gap the echo client saw,
and the memory copied (memory_processed). Medians over the completed runs.
The guest's `check` (its static data) is read after each run."""
from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import console, summary, table, write_result
from benchmarks.downtime_vs_virsh import BENCH_LAB, lab_settings
from livemig import api
from livemig.context import admin_context
from livemig.errors import MigrationFailed
from livemig.lab.control import GuestControl
from livemig.lab.echo import EchoStream
from livemig.lab.lab import Lab
from livemig.persistence.models import Instance, Migration
from livemig.services import services_for

CTX = admin_context("benchmark")


def policies(bandwidth: int, timeout_s: float) -> dict[str, dict]:
    cap = {"bandwidth_mib_s": bandwidth, "stall_s": 600.0}
    return {
        "plain": dict(cap, timeout_s=timeout_s),
        "auto-converge": dict(cap, timeout_s=300.0, auto_converge=True, auto_converge_initial=60,
                              auto_converge_increment=20),
        "post-copy": dict(cap, timeout_s=120.0, post_copy="after-first-pass"),
        "pause-to-complete": dict(cap, timeout_s=10.0, timeout_action="force-complete"),
    }


def one_run(lab: Lab, settings, guest: dict, stream: EchoStream, options: dict) -> dict:
    services = services_for(settings)
    with services.db.reading() as s:
        host = s.get(Instance, guest["uuid"]).host
    dest = lab.host_name(2) if host == lab.host_name(1) else lab.host_name(1)
    stream.reset_gap()
    try:
        migration_id = api.migrate(CTX, guest["name"], host, dest, options=options, settings=settings).id
    except MigrationFailed as exc:
        migration_id = exc.migration_id
    time.sleep(0.4)  # let the stream measure the gap after switchover
    with services.db.reading() as s:
        row = s.get(Migration, migration_id)
        wall = (row.finished_at - row.created_at).total_seconds() if row.finished_at else None
        return {"status": row.status, "wall_s": wall, "downtime_ms": row.downtime_ms,
                "client_gap_ms": stream.max_gap_s * 1000, "copied_mib": row.memory_processed / 2**20,
                "throttle_pct": row.throttle_pct, "phase": row.phase}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bandwidth", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    chosen = policies(args.bandwidth, args.timeout)
    runs: dict[str, list[dict]] = {name: [] for name in chosen}
    with lab_settings("policies") as settings:
        lab = Lab(BENCH_LAB, say=lambda s: console.print(f"lab: {s}", style="dim"))
        lab.up(hosts=2, guests=1, settings=settings)
        try:
            guest = lab.state()["guests"][0]
            control = GuestControl(guest["ip"])
            with EchoStream(guest["ip"], 7, period_s=0.02) as stream:
                time.sleep(0.5)
                for r in range(args.rounds):
                    for name, options in chosen.items():
                        control.dirty(16, random=True)
                        time.sleep(1.0)
                        run = one_run(lab, settings, guest, stream, options)
                        control.stop()
                        run["check"] = control.check()
                        runs[name].append(run)
                        console.print(f"round {r} {name}: {run['status']} wall {run['wall_s']} s downtime "
                                      f"{run['downtime_ms']} ms gap {run['client_gap_ms']:.0f} ms "
                                      f"copied {run['copied_mib']:.0f} MiB check {run['check']}")
        finally:
            lab.down(settings=settings)
    load = os.getloadavg()[0]
    rows = []
    for name, results in runs.items():
        done = [r for r in results if r["status"] == "completed"]
        rows.append((name, f"{len(done)}/{len(results)}", summary([r["wall_s"] for r in done])["median"],
                     summary([r["downtime_ms"] for r in done])["median"],
                     summary([r["client_gap_ms"] for r in done])["median"],
                     summary([r["copied_mib"] for r in done])["median"],
                     sum(1 for r in results if not r["check"])))
    table(f"Busy guest (dirtyr 16) over {args.bandwidth} MiB/s, {args.rounds} rounds (load average {load:.2f}); "
          f"medians of the completed runs",
          ["policy", "completed", "wall s", "downtime ms", "largest client gap ms", "copied MiB",
           "check failed"], rows)
    write_result("policies", {"arguments": vars(args), "runs": runs, "load_average": load})


if __name__ == "__main__":
    main()
