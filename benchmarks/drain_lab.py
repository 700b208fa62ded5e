"""Benchmark: how long `livemig host drain` takes to empty a lab host, against
the best its parallel slots allow with the same moves, and against a
sequential loop of `virsh migrate` over the same guests.

    python -m benchmarks.drain_lab [--hosts 4] [--guests 6] [--slots 3] [--rounds 3]

Method. A lab of HOSTS libvirt hosts with GUESTS TCG guests (128 MiB) on the
first one, b1; every host may take part in SLOTS migrations at once (set on
the inventory's hosts, as `host add --max-migrations` would), so a drain of
b1 runs at most SLOTS moves at a time. Each round:
1. `livemig host drain b1 --yes` (a CLI process, without ZooKeeper) is timed:
   its makespan includes planning, maintenance and following the moves.
   Each move's time is its migration's flow, from its creation (the drain
   submits a move only when its hosts have a free slot) to its end, read from
   livemig's records of the same drain. The bound is
   max(sum of move times / SLOTS, longest move): no executor with SLOTS slots
   runs those moves in less. makespan / bound is what the operation costs
   beyond its moves.
2. `livemig host undrain b1 --return` brings the guests back (timed too).
3. A sequential loop of `virsh migrate --live --p2p --persistent
   --undefinesource` moves the same guests to the hosts the drain chose, one
   after another (the filter and volume secret defined there by hand first,
   untimed; virsh has no pre-operations); then virsh moves them back
   (untimed) and `livemig host sync` tells the inventory.
Both tools allow the whole 300 ms downtime from the start (livemig's
LIVEMIG_DOWNTIME_STEPS=1, virsh's migrate-setmaxdowntime): under TCG a guest
can come up corrupted after a migration of many iterations (NOTES.md), and
virsh has no schedule of rising steps anyway. Every guest keeps a TCP echo
stream throughout; lost lines and reboots are reported, and so is the
machine's load average (2 shared cores: a busy machine slows every move)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time

import libvirt
import sqlalchemy as sa

from benchmarks.common import console, livemig_cli, summary, table, write_result
from benchmarks.downtime_vs_virsh import BENCH_LAB, MAX_DOWNTIME_MS, lab_settings, prepare_for_virsh
from livemig.config import Settings
from livemig.lab.echo import EchoStream, ask
from livemig.lab.lab import Lab
from livemig.persistence.database import database_for
from livemig.persistence.models import Host, Migration


def set_host_slots(settings: Settings, slots: int) -> None:
    # The lab registers its hosts with one migration at a time; an operator
    # would pass `--max-migrations` to `host add`.
    with database_for(settings.database_url).session() as s:
        s.execute(sa.update(Host).values(max_concurrent_migrations=slots))


def virsh_migrate(lab: Lab, guest: dict, src: int, dst: int) -> float:
    """The operator's command: the same flags and maximum downtime as livemig's; returns its wall time."""
    virsh = ["virsh", "-c", lab.host_uri(src)]
    for args in (["migrate-setmaxdowntime", guest["name"], str(MAX_DOWNTIME_MS)],
                 ["migrate", "--live", "--p2p", "--persistent", "--undefinesource", guest["name"], lab.host_uri(dst)]):
        started = time.monotonic()
        proc = subprocess.run(virsh + args, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)} failed: {proc.stderr.strip()}")
    return time.monotonic() - started


def move_times(settings: Settings, operation_id: int) -> list[dict]:
    """Each move of the operation: its guest, route, whole-flow and hypervisor-phase seconds."""
    with database_for(settings.database_url).session() as s:
        rows = list(s.scalars(sa.select(Migration).where(Migration.operation_id == operation_id)
                              .order_by(Migration.id)))
        return [{"instance": m.instance_name, "source": m.source_host, "dest": m.dest_host, "status": m.status,
                 "flow_s": (m.finished_at - m.created_at).total_seconds(),
                 "running_s": (m.finished_at - (m.started_at or m.created_at)).total_seconds()} for m in rows]


def bound(moves: list[dict], slots: int) -> float:
    times = [m["flow_s"] for m in moves]
    return max(sum(times) / slots, max(times)) if times else 0.0


def drain_round(lab: Lab, settings: Settings, slots: int, r: int) -> dict:
    drained = lab.host_name(1)
    # A drain that ends partial exits 1: its figures still count, its status is reported.
    proc, drain_wall = livemig_cli(settings, "host", "drain", drained, "--yes", "--format", "json", check=False)
    drain = json.loads(proc.stdout)
    moves = [m for m in move_times(settings, drain["id"]) if m["status"] == "completed"]
    proc, return_wall = livemig_cli(settings, "host", "undrain", drained, "--return", "--yes", "--format", "json")
    # Back on b1: the same guests, to the same destinations, one virsh call after another.
    guests = {g["name"]: g for g in lab.state()["guests"]}
    index = {lab.host_name(i): i for i in range(1, len(lab.state()["hosts"]) + 1)}
    for m in moves:
        prepare_for_virsh(lab, guests[m["instance"]], 1, index[m["dest"]])
    started = time.monotonic()
    for m in moves:
        virsh_migrate(lab, guests[m["instance"]], 1, index[m["dest"]])
    virsh_wall = time.monotonic() - started
    for m in moves:
        prepare_for_virsh(lab, guests[m["instance"]], index[m["dest"]], 1)
        virsh_migrate(lab, guests[m["instance"]], index[m["dest"]], 1)
    livemig_cli(settings, "host", "sync")
    result = {"round": r, "drain_status": drain["status"], "moves": moves, "drain_makespan_s": drain_wall,
              "bound_s": bound(moves, slots), "return_wall_s": return_wall, "virsh_sequential_s": virsh_wall,
              "sum_of_moves_s": sum(m["flow_s"] for m in moves),
              "longest_move_s": max((m["flow_s"] for m in moves), default=0.0)}
    console.print(f"round {r}: drain {drain['status']} in {drain_wall:.2f} s (bound {result['bound_s']:.2f} s), "
                  f"return {return_wall:.2f} s, virsh loop {virsh_wall:.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--guests", type=int, default=6)
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    os.environ["LIVEMIG_DOWNTIME_STEPS"] = "1"  # the livemig CLI processes inherit it
    load_before = os.getloadavg()
    with lab_settings("livemig-bench-drain-") as settings:
        lab = Lab(BENCH_LAB, say=lambda s: console.print(f"lab: {s}", style="dim"))
        lab.up(hosts=args.hosts, guests=args.guests, settings=settings)
        try:
            set_host_slots(settings, args.slots)
            guests = lab.state()["guests"]
            boot_ids = {g["name"]: ask(g["ip"], 9) for g in guests}
            with contextlib.ExitStack() as stack:
                streams = [stack.enter_context(EchoStream(g["ip"], 7, period_s=0.05)) for g in guests]
                time.sleep(0.5)
                rounds = [drain_round(lab, settings, args.slots, r) for r in range(args.rounds)]
                for stream in streams:
                    stream.settle()
            lost = sum(s.sent - len(s.received) for s in streams)
            rebooted = [g["name"] for g in guests if ask(g["ip"], 9) != boot_ids[g["name"]]]
            if lost or rebooted:
                kept = lab.keep_logs("last-benchmark-anomaly")
                console.print(f"echo lines lost or guests rebooted: the lab's logs are kept in {kept}")
        finally:
            lab.down(settings=settings)
    report(args, rounds, lost, rebooted, {"before": load_before, "after": os.getloadavg()})


def report(args, rounds: list[dict], lost: int, rebooted: list[str], load: dict) -> None:
    figures = {key: summary([r[key] for r in rounds]) for key in
               ("drain_makespan_s", "bound_s", "sum_of_moves_s", "longest_move_s", "return_wall_s",
                "virsh_sequential_s")}
    ratios = {"makespan_over_bound": summary([r["drain_makespan_s"] / r["bound_s"] for r in rounds]),
              "makespan_over_virsh_loop": summary([r["drain_makespan_s"] / r["virsh_sequential_s"]
                                                   for r in rounds])}
    table(f"drain of {args.guests} guests from b1 over {args.hosts - 1} hosts, {args.slots} slots "
          f"({args.rounds} rounds; seconds)", ["measure", "median", "min", "max"],
          [(label, figures[key]["median"], figures[key]["min"], figures[key]["max"]) for label, key in (
              ("livemig host drain (makespan)", "drain_makespan_s"),
              ("bound: max(sum of moves / slots, longest)", "bound_s"),
              ("sum of move times", "sum_of_moves_s"),
              ("longest move", "longest_move_s"),
              ("livemig host undrain --return", "return_wall_s"),
              ("sequential virsh migrate loop", "virsh_sequential_s"))]
          + [(label, ratios[key]["median"], ratios[key]["min"], ratios[key]["max"]) for label, key in (
              ("makespan / bound", "makespan_over_bound"),
              ("makespan / virsh loop", "makespan_over_virsh_loop"))])
    console.print(f"echo lines lost {lost}; guests rebooted {rebooted or 'none'}; drain outcomes "
                  f"{[r['drain_status'] for r in rounds]}; load average (1 min) {load['before'][0]:.1f} before, "
                  f"{load['after'][0]:.1f} after")
    write_result("drain_lab", {"arguments": vars(args), "rounds": rounds, "figures": figures, "ratios": ratios,
                               "echo_lines_lost": lost, "guests_rebooted": rebooted, "load_average": load})


if __name__ == "__main__":
    main()
