"""Drains on the fake hypervisor: plan time and drain time at fleet scale (issue 14).

    python -m benchmarks.drain_fake [--scenarios one-local,one-zookeeper,ten-zookeeper]
        [--instances 500] [--hosts 100] [--fleet 1000] [--drains 10] [--per-drain 50]
        [--background 2] [--source-limit 8] [--dest-limit 2] [--conductors 2] [--per-conductor 16]
        [--database postgresql]

Scenarios (each on a fresh database and ZooKeeper path, fake hosts whose
migrations take no time, so what is measured is livemig's own work):
- one-local: one host of INSTANCES instances in a fleet of HOSTS hosts,
  drained by `livemig.drain_host` in this process (no ZooKeeper; the
  moves' migrations run in threads here).
- one-zookeeper: the same drain posted on the ZooKeeper board and run by
  CONDUCTORS `livemig conductor` processes (the operation and its moves are
  jobs).
- ten-zookeeper: DRAINS hosts of PER-DRAIN instances each in a fleet of
  FLEET hosts, all drained at once (`drain_host(..., wait=False)`), run by
  the conductors.
- ten-local: the same DRAINS drains without ZooKeeper, each `drain_host` in
  a thread of this process (not in the default set).
Every other host runs BACKGROUND instances, so the scheduler weighs a used
fleet. Plan time is measured twice: the library's dry run
(`drain_host(dry_run=True)`: inventory snapshot and plan, nothing changed),
and inside the operation (its `claimed` event to its `planned` event).

After each scenario it checks the world: every drained host is empty (the
hypervisors and the inventory), every instance runs on exactly one host and
was moved at most once, and no host ever took part in more migrations at
once than its limit (from the migrations' event timeline: tests/drainfleet.py's
check, which the drain tests use)."""
from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

import livemig
from benchmarks.common import ROOT, console, livemig_env, scratch_dir, table, write_result
from livemig.drivers.base import InterfaceInfo
from livemig.drivers.fake import FakeDriver, fake_uri
from livemig.persistence.database import database_for
from livemig.persistence.models import Operation, OperationEvent
from tests.drainfleet import Fleet
from tests.servers import new_postgres_database, postgres_server, zookeeper_server

CTX = livemig.admin_context("bench")
FINISHED = ("completed", "partial", "failed", "aborted")
SCENARIOS = ("one-local", "one-zookeeper", "ten-zookeeper", "ten-local")


def build_fleet(settings: livemig.Settings, directory: Path, hosts: int, drained: dict[str, int], background: int,
                source_limit: int, dest_limit: int) -> Fleet:
    """HOSTS fake hosts; those in `drained` run that many instances (the
    hosts to drain, limit SOURCE_LIMIT), the others BACKGROUND each."""
    fleet = Fleet(settings, directory, FakeDriver(), {})
    names = [f"h{i:04d}" for i in range(hosts)]
    index = 0
    for name in names:
        big = name in drained
        # A drained host is large enough for its instances (1 vCPU, 512 MB each).
        fleet.driver.create_host(fleet.uri(name), migration_seconds=0.0, vcpus=256 if big else 64,
                                 memory_mb=(1024 if big else 256) * 1024)
        livemig.add_host(CTX, name, fleet.uri(name), settings=settings,
                         max_concurrent_migrations=source_limit if big else dest_limit)
        for _ in range(drained.get(name, background)):
            uuid_ = fleet.driver.create_domain(fleet.uri(name), f"vm{index:05d}", memory_mb=512, interfaces=[
                InterfaceInfo(mac=f"52:54:00:{index // 65536:02x}:{index // 256 % 256:02x}:{index % 256:02x}",
                              bridge="br-guests")])
            fleet.instances[uuid_] = f"vm{index:05d}"
            index += 1
    livemig.sync_hosts(CTX, settings=settings)
    return fleet


@contextlib.contextmanager
def conductors(settings: livemig.Settings, count: int, per_conductor: int) -> Iterator[list[subprocess.Popen]]:
    env = livemig_env(settings)
    env["LIVEMIG_POLL_INTERVAL_S"] = str(settings.poll_interval_s)
    procs = [subprocess.Popen([sys.executable, "-m", "livemig.cli", "conductor", "--name", f"c{i}",
                               "--max-migrations", str(per_conductor)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(count)]
    try:
        time.sleep(2.0)  # connected and watching the board
        yield procs
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def dry_run_seconds(settings: livemig.Settings, host: str) -> tuple[float, int]:
    started = time.monotonic()
    view = livemig.drain_host(CTX, host, dry_run=True, settings=settings)
    return time.monotonic() - started, sum(1 for m in view.moves if m.dest_host)


def wait_operations(settings: livemig.Settings, ids: list[int], timeout: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with database_for(settings.database_url).reading() as s:
            statuses = list(s.scalars(sa.select(Operation.status).where(Operation.id.in_(ids))))
        if all(status in FINISHED for status in statuses):
            return
        time.sleep(0.5)
    raise TimeoutError(f"operations {ids} did not finish in {timeout:g} s")


def operation_figures(settings: livemig.Settings, ids: list[int]) -> list[dict]:
    """Per operation: status, moves, and from its records the plan time
    (claimed -> planned) and the drain time (created -> finished)."""
    figures = []
    with database_for(settings.database_url).reading() as s:
        for operation in s.scalars(sa.select(Operation).where(Operation.id.in_(ids)).order_by(Operation.id)):
            events = {}
            for e in s.scalars(sa.select(OperationEvent).where(OperationEvent.operation_id == operation.id)
                               .order_by(OperationEvent.id)):
                events.setdefault(e.kind, e.at)  # the first of each kind
            view = livemig.show_operation(operation.id, settings=settings)
            figures.append({
                "operation": operation.id, "host": operation.host, "status": operation.status,
                "reason": operation.reason, "moves": len(view.moves), "counts": view.counts,
                "created_at": operation.created_at, "finished_at": operation.finished_at,
                "plan_s": (events["planned"] - events["claimed"]).total_seconds()
                if "planned" in events and "claimed" in events else None,
                "drain_s": (operation.finished_at - operation.created_at).total_seconds()
                if operation.finished_at else None,
            })
    return figures


def check_world(fleet: Fleet, drained: list[str]) -> dict:
    """The invariants every drain test asserts, counted instead of asserted."""
    running = fleet.hosts_running()
    inventory = fleet.inventory_hosts()
    misplaced = [name for uuid_, name in fleet.instances.items()
                 if len(running.get(uuid_, [])) != 1 or inventory.get(uuid_) != running[uuid_][0]]
    left = {h: sum(1 for hosts in running.values() if h in hosts) for h in drained}
    left_in_inventory = {h: len(livemig.list_instances(h, settings=fleet.settings)) for h in drained}
    moved_twice = sum(1 for n in fleet.completed_moves_per_instance().values() if n > 1)
    concurrency = fleet.max_concurrency()
    over = {h: c for h, c in concurrency.items() if c[0] > c[1]}
    return {"drained_hosts_empty": all(n == 0 for n in left.values()) and all(n == 0 for n in
                                                                               left_in_inventory.values()),
            "left_on_drained_hosts": sum(left.values()), "left_in_inventory": sum(left_in_inventory.values()),
            "instances_not_on_exactly_one_host": len(misplaced), "moved_more_than_once": moved_twice,
            "hosts_over_their_limit": len(over), "over": over,
            "drained_host_peak": {h: concurrency.get(h, (0, 0)) for h in drained},
            "migrations": len(fleet.migrations())}


def run_scenario(name: str, args: argparse.Namespace, zk_hosts: str | None, pg_url: str | None) -> dict:
    with scratch_dir("livemig-drain-") as data_dir:
        settings = livemig.Settings(data_dir=data_dir, queue_timeout_s=3600, zookeeper_session_timeout=4.0,
                                    poll_interval_s=args.poll_interval)
        if name.endswith("zookeeper"):
            settings = settings.replace(zookeeper_hosts=zk_hosts, zookeeper_root=f"/bench-{uuid.uuid4().hex[:8]}")
        if args.database == "postgresql":
            settings = settings.replace(database_url=new_postgres_database(pg_url, f"d_{uuid.uuid4().hex[:10]}"))
        one = name.startswith("one")
        hosts = args.hosts if one else args.fleet
        drained = {"h0000": args.instances} if one else {f"h{i:04d}": args.per_drain for i in range(args.drains)}
        console.print(f"[bold]{name}[/bold]: building {hosts} hosts, {sum(drained.values())} instances to drain "
                      f"on {len(drained)} host(s), {args.background} on each other host")
        started = time.monotonic()
        fleet = build_fleet(settings, Path(data_dir) / "fleet", hosts, drained, args.background,
                            args.source_limit, args.dest_limit)
        build_s = time.monotonic() - started
        dry = [dry_run_seconds(settings, h) for h in drained]
        with (conductors(settings, args.conductors, args.per_conductor) if zk_hosts and name.endswith("zookeeper")
              else contextlib.nullcontext()):
            started = time.monotonic()
            ids = drain(name, settings, list(drained))
            wall_s = time.monotonic() - started
        figures = operation_figures(settings, ids)
        world = check_world(fleet, list(drained))
        first = min(f["created_at"] for f in figures)
        last = max(f["finished_at"] for f in figures if f["finished_at"])
        result = {"scenario": name, "hosts": hosts, "drained_hosts": len(drained),
                  "instances_drained": sum(drained.values()), "background_per_host": args.background,
                  "instances": len(fleet.instances), "build_s": build_s,
                  "dry_run_s": [d[0] for d in dry], "dry_run_placed": [d[1] for d in dry],
                  "operations": figures, "wall_s": wall_s, "makespan_s": (last - first).total_seconds(),
                  "world": world}
        console.print({k: v for k, v in result.items() if k != "operations"})
        livemig.close()
        return result


def drain(name: str, settings: livemig.Settings, hosts: list[str]) -> list[int]:
    """Drain `hosts` as the scenario says; returns the operations' ids once all have ended."""
    if name in ("one-local", "one-zookeeper"):
        return [livemig.drain_host(CTX, hosts[0], settings=settings).id]
    if name == "ten-zookeeper":
        ids = [livemig.drain_host(CTX, h, wait=False, settings=settings).id for h in hosts]
        wait_operations(settings, ids)
        return ids
    # ten-local: without ZooKeeper a drain runs in its caller; one thread each.
    ids: list[int] = []
    errors: list[BaseException] = []

    def one(host: str) -> None:
        try:
            ids.append(livemig.drain_host(CTX, host, settings=settings).id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(h,), name=f"drain-{h}") for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return ids


def summary_rows(results: list[dict]) -> list[tuple]:
    rows = []
    for r in results:
        plans = [f["plan_s"] for f in r["operations"] if f["plan_s"] is not None]
        drains = [f["drain_s"] for f in r["operations"] if f["drain_s"] is not None]
        statuses = ",".join(sorted({f["status"] for f in r["operations"]}))
        w = r["world"]
        peaks = [f"{most}/{limit}" for most, limit in w["drained_host_peak"].values()]
        rows.append((r["scenario"], r["hosts"], f"{r['drained_hosts']} x {r['instances_drained'] // r['drained_hosts']}",
                     f"{statistics.median(r['dry_run_s']):.2f}", f"{statistics.median(plans):.2f}" if plans else "-",
                     f"{statistics.median(drains):.1f}" if drains else "-", f"{r['makespan_s']:.1f}",
                     f"{r['instances_drained'] / r['makespan_s']:.1f}", statuses,
                     "yes" if w["drained_hosts_empty"] else f"no ({w['left_on_drained_hosts']} left)",
                     w["instances_not_on_exactly_one_host"], w["moved_more_than_once"], w["hosts_over_their_limit"],
                     ",".join(sorted(set(peaks)))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenarios", default="one-local,one-zookeeper,ten-zookeeper")
    parser.add_argument("--instances", type=int, default=500, help="instances on the host of a single drain")
    parser.add_argument("--hosts", type=int, default=100, help="fleet of a single drain")
    parser.add_argument("--fleet", type=int, default=1000, help="fleet of the concurrent drains")
    parser.add_argument("--drains", type=int, default=10)
    parser.add_argument("--per-drain", type=int, default=50, help="instances on each host of the concurrent drains")
    parser.add_argument("--background", type=int, default=2, help="instances on every host not drained")
    parser.add_argument("--source-limit", type=int, default=8, help="migration limit of a drained host")
    parser.add_argument("--dest-limit", type=int, default=2, help="migration limit of the other hosts")
    parser.add_argument("--conductors", type=int, default=2)
    parser.add_argument("--per-conductor", type=int, default=16,
                        help="jobs each conductor runs at once (an operation holds one while it runs)")
    parser.add_argument("--poll-interval", type=float, default=0.2, help="the poll_interval_s setting")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="postgresql")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    results = []
    with contextlib.ExitStack() as stack:
        needs_zk = any(s.endswith("zookeeper") for s in scenarios)
        zk_hosts = stack.enter_context(zookeeper_server()).hosts if needs_zk else None
        pg_url = stack.enter_context(postgres_server()) if args.database == "postgresql" else None
        for name in scenarios:
            results.append(run_scenario(name, args, zk_hosts, pg_url))
            # After each scenario: a long run stopped midway keeps what it measured.
            write_result("drain_fake", {"parameters": vars(args), "results": results})
    table(f"drains on the fake hypervisor ({args.database}; drained hosts' limit {args.source_limit}, others' "
          f"{args.dest_limit}; migrations take no time)",
          ["scenario", "hosts", "drained", "dry run s", "plan s", "drain s", "makespan s", "moves/s", "status",
           "emptied", "not on 1 host", "moved twice", "over limit", "peak/limit"], summary_rows(results))


if __name__ == "__main__":
    main()
