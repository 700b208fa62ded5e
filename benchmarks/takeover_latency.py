"""Benchmark 4: takeover latency after a conductor is SIGKILLed mid-step.

    python -m benchmarks.takeover_latency [--runs 5] [--session-timeout 4]

Each run: two conductor processes; the one that claims the job kills itself
inside the migrate-domain step (after the hypervisor work, before the step is
recorded). Measured: seconds from that kill to the next step event written by
the other conductor. Target: within the session timeout plus 1 s."""
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
from benchmarks.common import ROOT, console, livemig_env, scratch_dir, summary, table, write_result
from livemig.persistence.database import database_for
from livemig.persistence.models import Event
from tests.fakecloud import FakeCloud
from tests.servers import zookeeper_server

CTX = livemig.admin_context("bench")


def one_run(zk_hosts: str, session_timeout: float) -> float:
    with scratch_dir("livemig-takeover-") as tmp:
        return _one_run(Path(tmp), zk_hosts, session_timeout)


def _one_run(tmp: Path, zk_hosts: str, session_timeout: float) -> float:
    settings = livemig.Settings(data_dir=str(tmp / "data"), zookeeper_hosts=zk_hosts,
                                zookeeper_session_timeout=session_timeout,
                                zookeeper_root=f"/takeover-{uuid.uuid4().hex[:8]}", poll_interval_s=0.02)
    FakeCloud.build(tmp, settings, migration_seconds=0.05)
    env = livemig_env(settings)
    stamp = tmp / "killed-at"
    victim = subprocess.Popen([sys.executable, "-m", "tests.helpers_conductor", "victim", "migrate-domain", "after"],
                              cwd=ROOT, env=dict(env, LIVEMIG_KILL_STAMP=str(stamp)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    view = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=settings)
    rescuer = subprocess.Popen([sys.executable, "-m", "tests.helpers_conductor", "rescuer"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim.wait(timeout=60)
    killed_at = float(stamp.read_text())
    victim_id = f"{os.uname().nodename}:{victim.pid}"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            with database_for(settings.database_url).session() as s:
                event = s.scalars(sa.select(Event).where(Event.migration_id == view.id, Event.kind == "step",
                                                         Event.controller != victim_id).order_by(Event.id)).first()
            if event is not None:
                # Event times are naive UTC.
                return event.at.replace(tzinfo=__import__("datetime").timezone.utc).timestamp() - killed_at
            time.sleep(0.02)
        raise TimeoutError("no takeover within 60 s")
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.wait(timeout=30)
        livemig.close()  # the posting session, before ZooKeeper stops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--session-timeout", type=float, default=livemig.Settings().zookeeper_session_timeout)
    args = parser.parse_args()
    latencies = []
    with zookeeper_server() as zk:
        for i in range(args.runs):
            latency = one_run(zk.hosts, args.session_timeout)
            console.print(f"run {i}: takeover after {latency:.2f} s")
            latencies.append(latency)
    s = summary(latencies)
    table(f"takeover latency (session timeout {args.session_timeout:g} s)", ["median s", "min s", "max s",
                                                                            "target s"],
          [(s["median"], s["min"], s["max"], args.session_timeout + 1.0)])
    write_result("takeover_latency", {"session_timeout_s": args.session_timeout, "latencies_s": latencies,
                                      "summary": s})


if __name__ == "__main__":
    main()
