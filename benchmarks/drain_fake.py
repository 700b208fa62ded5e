"""Benchmark: `host drain` on fake hypervisors (no ZooKeeper: the operation
and its moves run in this process, as `livemig host drain` does).

    python -m benchmarks.drain_fake [--instances 500] [--hosts 100] [--limit 4]
        [--fleet 1000] [--drains 10] [--per-drain 20]

1. One host of INSTANCES instances in a fleet of HOSTS hosts (each takes part
   in LIMIT migrations at once): the plan's time (a dry run, and the
   operation's own planning step), then the whole drain's.
2. DRAINS drains at once (one thread each) of PER-DRAIN instances each, in a
   fleet of FLEET hosts: their plan times and the time until all ended.
Each run also reports the most migrations any host took part in at once,
from the migrations' event timeline, against its limit."""
from __future__ import annotations

import argparse
import datetime as dt
import threading
import time
from pathlib import Path

import sqlalchemy as sa

import livemig
from benchmarks.common import console, scratch_dir, table, write_result
from livemig.config import Settings
from livemig.persistence.models import OperationEvent
from tests.drainfleet import CTX, Fleet


def _settings(directory: str) -> Settings:
    return Settings(data_dir=str(Path(directory) / "data"), poll_interval_s=0.05, queue_timeout_s=3600.0)


def _planning_s(fleet: Fleet, operation_id: int) -> float:
    """From the operation's claim to its plan being recorded (its events)."""
    with fleet.db().reading() as s:
        at = {e.kind: e.at for e in s.scalars(sa.select(OperationEvent).where(
            OperationEvent.operation_id == operation_id).order_by(OperationEvent.id.desc()))}
    return (at["planned"] - at["claimed"]).total_seconds()


def _worst_overlap(fleet: Fleet) -> tuple[int, str]:
    """The largest (most at once - limit) over the hosts, and where."""
    worst = max(((most - limit, host) for host, (most, limit) in fleet.max_concurrency().items()), default=(0, ""))
    return worst


def one_big_drain(instances: int, hosts: int, limit: int) -> dict:
    with scratch_dir("livemig-drain-fake-") as directory:
        settings = _settings(directory)
        started = time.monotonic()
        fleet = Fleet.build(Path(directory), settings, count=instances, memory_mb=256, migration_seconds=0.0,
                            dests={f"h{i:03d}": {"memory_mb": 262144, "vcpus": 256} for i in range(hosts - 1)},
                            limits={f"h{i:03d}": limit for i in range(hosts - 1)}, source_limit=limit)
        built_s = time.monotonic() - started
        started = time.monotonic()
        dry = livemig.drain_host(CTX, "src", dry_run=True, settings=settings)
        dry_run_s = time.monotonic() - started
        started = time.monotonic()
        view = livemig.drain_host(CTX, "src", settings=settings)
        drain_s = time.monotonic() - started
        over, where = _worst_overlap(fleet)
        return {"instances": instances, "hosts": hosts, "limit": limit, "build_s": built_s,
                "placed": len(dry.moves) - dry.counts.get("skipped", 0), "dry_run_s": dry_run_s,
                "planning_s": _planning_s(fleet, view.id), "drain_s": drain_s, "status": view.status,
                "moves_per_s": instances / drain_s, "over_limit": over, "over_limit_host": where}


def concurrent_drains(fleet_size: int, drains: int, per_drain: int, limit: int) -> dict:
    with scratch_dir("livemig-drains-fake-") as directory:
        settings = _settings(directory)
        sources = {f"s{i:02d}": per_drain for i in range(drains)}
        others = fleet_size - drains
        started = time.monotonic()
        fleet = Fleet.build(Path(directory), settings, sources=sources, memory_mb=256, migration_seconds=0.0,
                            dests={f"h{i:04d}": {"memory_mb": 262144, "vcpus": 256} for i in range(others)},
                            limits={f"h{i:04d}": limit for i in range(others)}, source_limit=limit)
        built_s = time.monotonic() - started
        views: dict[str, object] = {}

        def drain(host: str) -> None:
            views[host] = livemig.drain_host(CTX, host, settings=settings)

        threads = [threading.Thread(target=drain, args=(host,)) for host in sources]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        total_s = time.monotonic() - started
        plans = [_planning_s(fleet, v.id) for v in views.values()]
        over, where = _worst_overlap(fleet)
        return {"fleet": fleet_size, "drains": drains, "per_drain": per_drain, "limit": limit, "build_s": built_s,
                "planning_s_max": max(plans), "planning_s_median": sorted(plans)[len(plans) // 2],
                "total_s": total_s, "statuses": sorted({v.status for v in views.values()}),
                "moves_per_s": drains * per_drain / total_s, "over_limit": over, "over_limit_host": where}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--fleet", type=int, default=1000)
    parser.add_argument("--drains", type=int, default=10)
    parser.add_argument("--per-drain", type=int, default=20)
    args = parser.parse_args()
    big = one_big_drain(args.instances, args.hosts, args.limit)
    table("one drain", ["instances", "hosts", "limit", "dry-run plan s", "planning step s", "drain s", "moves/s",
                        "status", "most over a limit"],
          [[big["instances"], big["hosts"], big["limit"], f"{big['dry_run_s']:.2f}", f"{big['planning_s']:.2f}",
            f"{big['drain_s']:.1f}", f"{big['moves_per_s']:.1f}", big["status"], big["over_limit"]]])
    many = concurrent_drains(args.fleet, args.drains, args.per_drain, args.limit)
    table("concurrent drains", ["fleet", "drains", "each", "planning s (median/max)", "all done s", "moves/s",
                                "statuses", "most over a limit"],
          [[many["fleet"], many["drains"], many["per_drain"],
            f"{many['planning_s_median']:.2f}/{many['planning_s_max']:.2f}", f"{many['total_s']:.1f}",
            f"{many['moves_per_s']:.1f}", ",".join(many["statuses"]), many["over_limit"]]])
    path = write_result("drain_fake", {"one_drain": big, "concurrent_drains": many,
                                       "at": dt.datetime.now(dt.timezone.utc).isoformat()})
    del path  # write_result printed it


if __name__ == "__main__":
    main()
