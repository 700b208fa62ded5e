"""Benchmark 1 and 2: downtime, wall time and orchestration overhead of
livemig against plain `virsh migrate`, on the same lab guest and hosts.

    python -m benchmarks.downtime_vs_virsh [--rounds 10]

Per round both tools migrate the guest once (the order alternates, so machine
noise and direction hit both alike) with the same flags (live, p2p, persist
on destination, undefine source) and the same 300 ms maximum downtime, while
a client keeps a TCP echo stream to the guest (a line every 20 ms). Virsh
needs by hand what livemig's pre-operations do (the filter and the volume
secret on the destination): that setup is done before its timed call."""
from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import time
from pathlib import Path
from typing import Iterator

import libvirt
import sqlalchemy as sa

from benchmarks.common import console, livemig_cli, scratch_dir, summary, table, write_result
from livemig.config import Settings
from livemig.lab.echo import EchoStream, ask
from livemig.lab.lab import FILTER_XML, Lab, LabConfig
from livemig.persistence.database import database_for
from livemig.persistence.models import Event, Migration

BENCH_LAB = LabConfig(name="lmbench", root="/var/lib/livemig-lab-bench", bridge="lmbbr0", subnet="10.76.0",
                      port_base=16900, iscsi_port=13290, host_prefix="b")
MAX_DOWNTIME_MS = 300


def completed_stats(uri: str, uuid: str) -> dict:
    conn = libvirt.open(uri)
    try:
        return conn.lookupByUUIDString(uuid).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED
                                                      | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
    finally:
        conn.close()


def prepare_for_virsh(lab: Lab, guest: dict, src: int, dst: int) -> None:
    """What an operator does by hand before `virsh migrate`: the filter and the
    volume secret on the destination."""
    s, d = libvirt.open(lab.host_uri(src)), libvirt.open(lab.host_uri(dst))
    try:
        try:
            d.nwfilterLookupByName("livemig-lab-sg")
        except libvirt.libvirtError:
            d.nwfilterDefineXML(FILTER_XML)
        try:
            d.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, guest["secret_usage"])
        except libvirt.libvirtError:
            value = s.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, guest["secret_usage"]).value()
            secret = d.secretDefineXML(f"<secret ephemeral='no' private='no'><usage type='iscsi'>"
                                       f"<target>{guest['secret_usage']}</target></usage></secret>")
            secret.setValue(value)
    finally:
        s.close()
        d.close()


def virsh_migrate(lab: Lab, guest: dict, src: int, dst: int) -> float:
    subprocess.run(["virsh", "-c", lab.host_uri(src), "migrate-setmaxdowntime", guest["name"], str(MAX_DOWNTIME_MS)],
                   check=True, capture_output=True)
    started = time.monotonic()
    subprocess.run(["virsh", "-c", lab.host_uri(src), "migrate", "--live", "--p2p", "--persistent",
                    "--undefinesource", guest["name"], lab.host_uri(dst)], check=True, capture_output=True)
    return time.monotonic() - started


def step_times(settings: Settings, migration_id: int) -> dict[str, float]:
    with database_for(settings.database_url).session() as s:
        events = list(s.scalars(sa.select(Event).where(Event.migration_id == migration_id).order_by(Event.id)))
        m = s.get(Migration, migration_id)
    running: dict[str, object] = {}
    out: dict[str, float] = {}
    for e in events:
        if e.kind == "note" and e.name == "migrate-domain" and e.message.startswith("hypervisor migration call took"):
            out["_hypervisor_call"] = int(e.message.split()[4]) / 1000
        if e.kind != "step":
            continue
        if e.state == "RUNNING":
            running[e.name] = e.at
        elif e.state == "SUCCESS" and e.name in running:
            out[e.name] = (e.at - running[e.name]).total_seconds()
    out["_flow_total"] = (m.finished_at - m.created_at).total_seconds()
    return out


@contextlib.contextmanager
def lab_settings(prefix: str) -> Iterator[Settings]:
    """livemig's settings for a benchmark's lab (TCG guests, the benchmark's
    maximum downtime), its data in a scratch directory removed afterwards."""
    with scratch_dir(prefix) as data_dir:
        yield Settings(data_dir=data_dir, domain_type="qemu", max_downtime_ms=MAX_DOWNTIME_MS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with lab_settings("livemig-bench-") as settings:
        run(settings, args.rounds)


def run(settings: Settings, rounds: int) -> None:
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    lab = Lab(BENCH_LAB, say=lambda s: console.print(f"lab: {s}", style="dim"))
    lab.up(hosts=2, guests=1, settings=settings)
    runs: list[dict] = []
    try:
        guest = lab.state()["guests"][0]
        boot_id = ask(guest["ip"], 9)
        where = 1
        with EchoStream(guest["ip"], 7, period_s=0.02) as stream:
            time.sleep(0.5)
            for r in range(rounds):
                order = ("livemig", "virsh") if r % 2 == 0 else ("virsh", "livemig")
                for tool in order:
                    src, dst = where, 3 - where
                    stream.reset_gap()
                    if tool == "livemig":
                        proc, wall = livemig_cli(settings, "migrate", "--live", "-q", lab.host_name(src),
                                                 guest["name"], lab.host_name(dst))
                        mid = int(proc.stdout.split()[1].rstrip(":"))
                    else:
                        prepare_for_virsh(lab, guest, src, dst)
                        wall = virsh_migrate(lab, guest, src, dst)
                        mid = None
                    time.sleep(0.4)  # let the stream measure the gap after switchover
                    stats = completed_stats(lab.host_uri(dst), guest["uuid"])
                    run = {"round": r, "tool": tool, "route": f"{src}->{dst}", "wall_s": wall,
                           "downtime_ms": stats.get("downtime"), "hypervisor_s": stats.get("time_elapsed", 0) / 1000,
                           "client_gap_ms": stream.max_gap_s * 1000}
                    if mid is not None:
                        run["steps_s"] = step_times(settings, mid)
                        run["overhead_s"] = run["steps_s"]["_flow_total"] - run["hypervisor_s"]
                        # Everything but libvirt's migration API call (its job and its own
                        # preparation, finish and confirm phases, which virsh waits for too).
                        run["outside_call_s"] = run["steps_s"]["_flow_total"] - run["steps_s"]["_hypervisor_call"]
                        run["command_outside_call_s"] = wall - run["steps_s"]["_hypervisor_call"]
                    runs.append(run)
                    console.print(f"round {r} {tool:7} {src}->{dst} wall {wall:.2f} s downtime "
                                  f"{run['downtime_ms']} ms gap {run['client_gap_ms']:.0f} ms")
                    where = dst
                    if tool == "virsh":
                        # The inventory learns where virsh put the VM (not timed).
                        livemig_cli(settings, "host", "sync")
            stream.settle()
        lost = stream.sent - len(stream.received)
        rebooted = ask(guest["ip"], 9) != boot_id
        if lost or rebooted:
            # Worth a look at the guest's console and QEMU's logs, which `down` removes.
            kept = lab.keep_logs("last-benchmark-anomaly")
            console.print(f"echo lines lost or guest rebooted: the lab's logs are kept in {kept}")
    finally:
        lab.down(settings=settings)
    report(runs, lost, rebooted)


def report(runs: list[dict], lost: int, rebooted: bool) -> None:
    by = {t: [r for r in runs if r["tool"] == t] for t in ("livemig", "virsh")}
    rows = []
    figures = {}
    for metric, key in (("command wall s", "wall_s"), ("libvirt downtime ms", "downtime_ms"),
                        ("largest client gap ms", "client_gap_ms")):
        lm, vs = summary([r[key] for r in by["livemig"]]), summary([r[key] for r in by["virsh"]])
        ratio = lm["median"] / vs["median"] if vs["median"] else float("nan")
        figures[key] = {"livemig": lm, "virsh": vs, "ratio_of_medians": ratio}
        rows.append((metric, lm["median"], lm["min"], lm["max"], vs["median"], vs["min"], vs["max"], ratio))
    table("livemig versus virsh migrate (medians, min, max)",
          ["metric", "livemig med", "min", "max", "virsh med", "min", "max", "livemig/virsh"], rows)
    overheads = [r["overhead_s"] for r in by["livemig"]]
    steps: dict[str, list[float]] = {}
    for r in by["livemig"]:
        for name, secs in r["steps_s"].items():
            steps.setdefault(name, []).append(secs)
    table("livemig flow steps (median seconds)", ["step", "median s"],
          [(k, statistics.median(v)) for k, v in steps.items()])
    ov = summary(overheads)
    outside = summary([r["outside_call_s"] for r in by["livemig"]])
    command_outside = summary([r["command_outside_call_s"] for r in by["livemig"]])
    virsh_outside = summary([r["wall_s"] - r["hypervisor_s"] for r in by["virsh"]])
    table("time outside the hypervisor (medians, seconds)", ["measure", "median s", "min", "max"], [
        ("livemig flow total minus libvirt's time_elapsed", ov["median"], ov["min"], ov["max"]),
        # time_elapsed ends with the memory transfer, before libvirt's finish and
        # confirm phases; virsh's command against it shows how much that leaves out.
        ("virsh whole command minus libvirt's time_elapsed", virsh_outside["median"], virsh_outside["min"],
         virsh_outside["max"]),
        ("livemig flow total minus libvirt's migration call", outside["median"], outside["min"], outside["max"]),
        ("livemig whole command minus libvirt's migration call", command_outside["median"], command_outside["min"],
         command_outside["max"]),
    ])
    console.print(f"echo lines lost {lost}; guest rebooted {rebooted}")
    write_result("downtime_vs_virsh", {"runs": runs, "figures": figures, "overhead_s": ov,
                                       "outside_call_s": outside, "command_outside_call_s": command_outside,
                                       "virsh_outside_time_elapsed_s": virsh_outside,
                                       "echo_lines_lost": lost, "guest_rebooted": rebooted})


if __name__ == "__main__":
    main()
