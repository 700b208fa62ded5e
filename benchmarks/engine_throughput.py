"""Benchmark 3: engine throughput on the jobboard with fake hypervisors.

    python -m benchmarks.engine_throughput [--migrations 1000] [--hosts 100]
        [--conductors 1,2,4] [--databases sqlite,postgresql] [--per-conductor 4] [--repeat 1]

Per configuration: a fresh database (SQLite file, or a new database on a
PostgreSQL server started here), a fresh ZooKeeper path, HOSTS fake hosts
(limit 1 migration each) carrying MIGRATIONS instances; every instance is
migrated once to the next host, all posted at once, run by N conductor
processes. Reports migrations/s, p50/p99 submit-to-done, each conductor's
peak RSS, and whether any host ever had two overlapping migrations."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

import livemig
from benchmarks.common import ROOT, console, livemig_env, percentile, scratch_dir, table, write_result
from livemig.drivers.fake import FakeDriver, fake_uri
from livemig.persistence.database import database_for
from livemig.persistence.models import Event, Migration
from tests.servers import new_postgres_database, postgres_server, zookeeper_server

CTX = livemig.admin_context("bench")


def build_cloud(settings, hosts: int, migrations: int) -> list[tuple[str, str, str]]:
    fake = FakeDriver()
    world = Path(settings.data_dir) / "world"
    names = [f"h{i:03d}" for i in range(hosts)]
    for name in names:
        fake.create_host(fake_uri(world, name), migration_seconds=0.0, vcpus=64, memory_mb=262144)
        livemig.add_host(CTX, name, fake_uri(world, name), settings=settings)
    plan = []
    for i in range(migrations):
        src = names[i % hosts]
        dst = names[(i + 1) % hosts]
        vm = f"vm{i:04d}"
        fake.create_domain(fake_uri(world, src), vm, memory_mb=256)
        plan.append((vm, src, dst))
    livemig.sync_hosts(CTX, settings=settings)
    return plan


def peak_rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def overlapping(settings) -> int:
    """Pairs of migrations whose hypervisor work overlapped on a host."""
    with database_for(settings.database_url).session() as s:
        migrations = {m.id: m for m in s.scalars(sa.select(Migration))}
        spans: dict[int, list] = {}
        for e in s.scalars(sa.select(Event).where(Event.kind == "step", Event.name == "migrate-domain")):
            spans.setdefault(e.migration_id, []).append((e.state, e.at))
    busy: dict[str, list] = {}
    for mid, evs in spans.items():
        start = min(at for st, at in evs if st == "RUNNING")
        end = max(at for st, at in evs if st == "SUCCESS")
        m = migrations[mid]
        busy.setdefault(m.source_host, []).append((start, end))
        busy.setdefault(m.dest_host, []).append((start, end))
    bad = 0
    for spans_ in busy.values():
        spans_.sort()
        bad += sum(1 for (s1, e1), (s2, e2) in zip(spans_, spans_[1:]) if e1 > s2)
    return bad


def run_config(db: str, pg_url: str | None, zk_hosts: str, conductors: int, hosts: int, migrations: int,
               per_conductor: int) -> dict:
    with scratch_dir("livemig-tput-") as data_dir:
        return _run_config(data_dir, db, pg_url, zk_hosts, conductors, hosts, migrations, per_conductor)


def _run_config(data_dir: str, db: str, pg_url: str | None, zk_hosts: str, conductors: int, hosts: int,
                migrations: int, per_conductor: int) -> dict:
    settings = livemig.Settings(data_dir=data_dir, zookeeper_hosts=zk_hosts, zookeeper_session_timeout=4.0,
                                zookeeper_root=f"/bench-{uuid.uuid4().hex[:8]}", queue_timeout_s=3600,
                                poll_interval_s=0.02)
    if db == "postgresql":
        settings = settings.replace(database_url=new_postgres_database(pg_url, f"b_{uuid.uuid4().hex[:10]}"))
    console.print(f"[bold]{db}, {conductors} conductor(s), {per_conductor} migrations each at once[/bold]: "
                  f"building {hosts} hosts, {migrations} instances")
    plan = build_cloud(settings, hosts, migrations)
    env = livemig_env(settings)
    env["LIVEMIG_POLL_INTERVAL_S"] = "0.02"
    procs = [subprocess.Popen([sys.executable, "-m", "livemig.cli", "conductor", "--name", f"c{i}",
                               "--max-migrations", str(per_conductor)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(conductors)]
    time.sleep(2.0)  # conductors connected and waiting
    submit_started = time.monotonic()
    ids = [livemig.migrate(CTX, vm, src, dst, wait=False, settings=settings).id for vm, src, dst in plan]
    submit_s = time.monotonic() - submit_started
    engine = database_for(settings.database_url)
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        with engine.session() as s:
            done = s.scalar(sa.select(sa.func.count()).select_from(Migration).where(
                Migration.status.in_(["completed", "failed", "error", "cancelled"])))
        if done >= len(ids):
            break
        time.sleep(0.5)
    rss = [peak_rss_mb(p.pid) for p in procs]
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    with engine.session() as s:
        rows = list(s.scalars(sa.select(Migration)))
        # Claimed while a host was busy: such a job waits in reserve-hosts, holding a conductor's slot.
        waited = s.scalar(sa.select(sa.func.count(sa.distinct(Event.migration_id))).where(
            Event.kind == "note", Event.name == "reserve-hosts", Event.state == "queued"))
    latencies = [(m.finished_at - m.created_at).total_seconds() for m in rows if m.finished_at]
    first = min(m.created_at for m in rows)
    last = max(m.finished_at for m in rows if m.finished_at)
    span = (last - first).total_seconds()
    result = {"database": db, "conductors": conductors, "per_conductor": per_conductor, "migrations": len(rows),
              "hosts": hosts,
              "completed": sum(m.status == "completed" for m in rows), "submit_s": submit_s, "span_s": span,
              "per_second": len(rows) / span if span else float("nan"), "p50_s": percentile(latencies, 50),
              "p99_s": percentile(latencies, 99), "waited_for_hosts": waited, "peak_rss_mb": rss,
              "host_limit_violations": overlapping(settings)}
    console.print(result)
    # The database pools and the posting session, before this run's ZooKeeper path is left behind.
    livemig.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--migrations", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--conductors", default="1,2,4")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--per-conductor", type=int, default=4, help="migrations each conductor runs at once")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each configuration (the table shows the median rate, and the range)")
    args = parser.parse_args()
    counts = [int(c) for c in args.conductors.split(",")]
    dbs = args.databases.split(",")
    results = []
    with zookeeper_server() as zk:
        pg_ctx = postgres_server() if "postgresql" in dbs else None
        pg_url = pg_ctx.__enter__() if pg_ctx else None
        try:
            for db in dbs:
                for n in counts:
                    for _ in range(args.repeat):
                        results.append(run_config(db, pg_url, zk.hosts, n, args.hosts, args.migrations,
                                                  args.per_conductor))
        finally:
            if pg_ctx:
                pg_ctx.__exit__(None, None, None)
    rows = []
    for db in dbs:
        for n in counts:
            runs = [r for r in results if r["database"] == db and r["conductors"] == n]
            rates = [r["per_second"] for r in runs]
            # The run with the median rate stands for the configuration.
            typical = sorted(runs, key=lambda r: r["per_second"])[(len(runs) - 1) // 2]
            completed = f"{sum(r['completed'] for r in runs)}/{sum(r['migrations'] for r in runs)}"
            rows.append((db, n, len(runs), completed, f"{percentile(rates, 50):.1f}",
                         f"{min(rates):.1f}-{max(rates):.1f}", typical["p50_s"], typical["p99_s"],
                         max(max(r["peak_rss_mb"]) for r in runs), sum(r["host_limit_violations"] for r in runs)))
    table(f"engine throughput (fake hypervisor, ZooKeeper jobboard, {args.per_conductor} migrations per conductor "
          "at once)",
          ["database", "conductors", "runs", "completed", "migrations/s (median)", "range", "p50 s", "p99 s",
           "peak RSS MB (max)", "limit violations"], rows)
    write_result("engine_throughput", {"parameters": vars(args), "results": results})


if __name__ == "__main__":
    main()
