"""Where libvirt's own time goes in a live migration, read from its debug
logs: what its job statistics' `time_elapsed` covers, and what it leaves out.

    python -m benchmarks.libvirt_phases [--runs 4]

A lab whose two libvirt daemons log their QEMU driver at debug level; the
guest goes back and forth by plain `virsh migrate` (the same flags as
benchmark 1, no livemig in the measurement), and each call's phases are found
in both daemons' logs: the destination's preparation (starting its QEMU), the
memory transfer, the destination's finish (the guest resumes there) and the
source's confirm (removing the guest's filter rules, stopping its QEMU).
Times are seconds from the source daemon's entry into the migration."""
from __future__ import annotations

import argparse
import datetime
import re
import statistics
import time
from pathlib import Path

from benchmarks.common import console, summary, table, write_result
from benchmarks.downtime_vs_virsh import completed_stats, lab_settings, prepare_for_virsh, virsh_migrate
from livemig.config import Settings
from livemig.lab.lab import Lab, LabConfig

PHASES_LAB = LabConfig(name="lmphase", root="/var/lib/livemig-lab-phases", bridge="lmpbr0", subnet="10.75.0",
                       port_base=17000, iscsi_port=13300, host_prefix="p",
                       libvirt_log_filters="1:qemu 1:util.command 3:*")

START = ("src", "qemuMigrationSrcPerform:")
JOB_END = "libvirt's job ends"
# (daemon, what it marks, the first line at or after the start that matches)
MARKS = (
    ("src", "begin: the source describes the guest", "phase to 'begin3'"),
    ("dst", "prepare: the destination's QEMU is started", "qemuProcessLaunch:"),
    ("dst", "the destination's QEMU waits for the stream", "Setting up incoming migration"),
    ("src", "perform: the memory transfer starts", "phase to 'perform3'"),
    ("src", "the guest is paused for the switchover", "to paused state, reason migration"),
    ("src", "the transfer is completed", "changed state to completed"),
    ("dst", "finish: the guest runs on the destination", "into running state, reason 'migrated'"),
    ("src", "confirm: the source stops its QEMU, removing filter rules", "qemuProcessStop:"),
    ("src", "the source's QEMU is killed (libvirt polls its exit every 200 ms)", "qemuProcessKill:"),
    ("src", JOB_END, "qemuMigrationSrcRestoreDomainState:"),
)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\+0000: ")


def log_path(lab: Lab, index: int) -> Path:
    return lab.root / "hosts" / lab.host_name(index) / "log" / "libvirtd.log"


def read_from(path: Path, offset: int) -> list[tuple[float, str]]:
    """The log's timestamped lines after `offset`, as (epoch seconds, line)."""
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    lines = []
    for line in text.splitlines():
        m = STAMP.match(line)
        if m:
            at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.UTC)
            lines.append((at.timestamp(), line))
    return lines


def first(lines: list[tuple[float, str]], needle: str, after: float) -> float | None:
    return next((at for at, line in lines if at >= after and needle in line), None)


def one_run(lab: Lab, guest: dict, src: int, dst: int) -> dict:
    offsets = {i: log_path(lab, i).stat().st_size for i in (src, dst)}
    prepare_for_virsh(lab, guest, src, dst)
    wall = virsh_migrate(lab, guest, src, dst)
    returned = time.time()
    logs = {"src": read_from(log_path(lab, src), offsets[src]), "dst": read_from(log_path(lab, dst), offsets[dst])}
    start = first(logs[START[0]], START[1], 0.0)
    if start is None:
        raise RuntimeError(f"no migration in {log_path(lab, src)}: are the debug log filters on?")
    marks = {}
    for daemon, label, needle in MARKS:
        at = first(logs[daemon], needle, start)
        marks[label] = None if at is None else round(at - start, 3)
    stats = completed_stats(lab.host_uri(dst), guest["uuid"])
    return {"route": f"{src}->{dst}", "virsh_wall_s": wall, "marks_s": marks,
            "virsh_returned_s": round(returned - start, 3), "time_elapsed_s": stats.get("time_elapsed", 0) / 1000,
            "downtime_ms": stats.get("downtime")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    with lab_settings("livemig-phases-") as settings:
        run(settings, args.runs)


def run(settings: Settings, runs: int) -> None:
    lab = Lab(PHASES_LAB, say=lambda s: console.print(f"lab: {s}", style="dim"))
    lab.up(hosts=2, guests=1, settings=settings)
    results = []
    try:
        guest = lab.state()["guests"][0]
        where = 1
        for r in range(runs):
            result = one_run(lab, guest, where, 3 - where)
            results.append(result)
            console.print(f"run {r} {result['route']}: time_elapsed {result['time_elapsed_s']:.3f} s, "
                          f"libvirt's job {result['marks_s'][JOB_END]} s")
            where = 3 - where
    finally:
        lab.down(settings=settings)
    report(results)


def report(results: list[dict]) -> None:
    rows = []
    for _daemon, label, _needle in MARKS:
        values = [r["marks_s"][label] for r in results if r["marks_s"][label] is not None]
        rows.append((label, statistics.median(values) if values else float("nan"), len(values)))
    elapsed = summary([r["time_elapsed_s"] for r in results])
    ended = [r for r in results if r["marks_s"][JOB_END] is not None]
    job_end = summary([r["marks_s"][JOB_END] for r in ended])
    after = summary([r["marks_s"][JOB_END] - r["time_elapsed_s"] for r in ended])
    rows += [("(time_elapsed, from the job statistics)", elapsed["median"], elapsed["n"]),
             ("(virsh returns)", statistics.median(r["virsh_returned_s"] for r in results), len(results))]
    table("libvirt's phases of one live migration (median seconds from the source's entry)",
          ["phase", "median s", "runs"], rows)
    console.print(f"libvirt's job runs {after['median']:.3f} s ({after['min']:.3f}-{after['max']:.3f}) past "
                  f"time_elapsed, which ends with the memory transfer")
    write_result("libvirt_phases", {"runs": results, "time_elapsed_s": elapsed, "job_s": job_end,
                                    "job_after_time_elapsed_s": after})


if __name__ == "__main__":
    main()
