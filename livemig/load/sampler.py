"""The load sampler: one pass reads every host's CPU and memory counters and
its running domains', differentiates them against the previous reading, and
writes one LoadSample per host and per instance; samples older than the
history are pruned.

Counters are cumulative (CPU time since boot or since QEMU started), so a
utilisation needs two readings: the sampler keeps the last one per host in
memory. A host read for the first time (or whose last reading is stale) is
read again `settle_s` later in the same pass, so a single pass, as
`livemig host sync --stats` makes, writes samples too.

A host that does not answer is skipped (and reported: the conductor's loop
logs a warning, `host sync --stats` prints one): each host is read on
its own thread and a pass waits at most `host_timeout_s` for them, so a hung
hypervisor connection never holds up the others."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import logging
import threading
import time
from typing import Callable, Iterable

import sqlalchemy as sa

from livemig.config import Settings
from livemig.drivers.base import DomainStats, HostStats
from livemig.drivers.registry import DriverRegistry
from livemig.errors import LivemigError
from livemig.persistence.database import Database
from livemig.persistence.models import Host, LoadSample

LOG = logging.getLogger(__name__)

# A previous reading older than this many sampling intervals is not
# differentiated against: its figure would average over a stretch that other
# conductors already sampled.
STALE_INTERVALS = 3.0


@dataclasses.dataclass(frozen=True)
class Reading:
    host: HostStats
    domains: dict[str, DomainStats]  # by uuid


@dataclasses.dataclass
class PassReport:
    """What one pass did: samples written per host, hosts skipped and why."""

    written: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    pruned: int = 0


def to_datetime(timestamp: float) -> dt.datetime:
    """A driver timestamp as the naive UTC datetime the inventory stores."""
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).replace(tzinfo=None)


def host_sample(name: str, before: HostStats, after: HostStats) -> dict | None:
    """A host's sample from two readings; None when the counter went back (a
    reboot) or no time passed."""
    interval = after.timestamp - before.timestamp
    busy = after.cpu_busy_ns - before.cpu_busy_ns
    if interval <= 0 or busy < 0 or after.cpus <= 0:
        return None
    # A real host cannot be busier than all its CPUs; an overcommitted fake can.
    cpu = min(1.0, busy / (interval * 1e9 * after.cpus))
    return {"at": to_datetime(after.timestamp), "host": name, "instance_uuid": None, "cpu": cpu,
            "host_cpus": after.cpus, "memory_used_mb": after.memory_used_mb, "interval_s": interval}


def domain_sample(host: str, cpus: int, before: DomainStats, after: DomainStats) -> dict | None:
    """An instance's sample, its CPU as a fraction of the host's `cpus`; None
    when its counter went back (QEMU restarted: a migration, a reboot)."""
    interval = after.timestamp - before.timestamp
    used = after.cpu_time_ns - before.cpu_time_ns
    if interval <= 0 or used < 0 or cpus <= 0:
        return None
    return {"at": to_datetime(after.timestamp), "host": host, "instance_uuid": after.uuid,
            "cpu": min(1.0, used / (interval * 1e9 * cpus)), "host_cpus": cpus,
            "memory_used_mb": after.memory_used_mb, "interval_s": interval}


def samples_between(name: str, before: Reading, after: Reading) -> list[dict]:
    rows = [host_sample(name, before.host, after.host)]
    rows += [domain_sample(name, after.host.cpus, before.domains[uuid], dom)
             for uuid, dom in after.domains.items() if uuid in before.domains]
    return [row for row in rows if row is not None]


class Sampler:
    """Samples the hosts of one inventory; keeps the last reading per host."""

    def __init__(self, db: Database, drivers: DriverRegistry, settings: Settings, *,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 host_timeout_s: float = 30.0, max_threads: int = 16):
        self._db = db
        self._drivers = drivers
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._host_timeout_s = host_timeout_s
        self._max_threads = max_threads
        self._previous: dict[str, Reading] = {}

    def _read(self, uri: str) -> Reading:
        driver = self._drivers.for_uri(uri)
        host = driver.host_stats(uri)
        return Reading(host=host, domains={d.uuid: d for d in driver.domain_stats(uri)})

    def _read_all(self, targets: dict[str, str], report: PassReport) -> dict[str, Reading]:
        """Each host's reading, read in parallel; a host that fails or does
        not answer in time is in `report.skipped` instead."""
        readings: dict[str, Reading] = {}
        if not targets:
            return readings
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(self._max_threads, len(targets)),
                                                     thread_name_prefix="livemig-sampler")
        try:
            futures = {pool.submit(self._read, uri): name for name, uri in targets.items()}
            done, pending = concurrent.futures.wait(futures, timeout=self._host_timeout_s)
            for future in pending:
                report.skipped[futures[future]] = f"no answer in {self._host_timeout_s:g} s"
            for future in done:
                name = futures[future]
                try:
                    readings[name] = future.result()
                except LivemigError as exc:
                    report.skipped[name] = str(exc)
                except Exception as exc:  # noqa: BLE001 - one host's surprise must not stop the others
                    report.skipped[name] = f"{type(exc).__name__}: {exc}"
        finally:
            # A hung call keeps its thread; the pass does not wait for it.
            pool.shutdown(wait=False, cancel_futures=True)
        return readings

    def sample(self, hosts: Iterable[str] | None = None, settle_s: float = 1.0) -> PassReport:
        """One pass over every host (or those named): write their samples,
        prune old ones, and report what was written and what was skipped."""
        report = PassReport()
        with self._db.reading() as session:
            query = sa.select(Host.name, Host.uri).order_by(Host.name)
            if hosts is not None:
                query = query.where(Host.name.in_(list(hosts)))
            targets = {name: uri for name, uri in session.execute(query)}
        readings = self._read_all(targets, report)
        fresh_after = self._clock() - STALE_INTERVALS * max(self._settings.load_sample_interval_s, settle_s)
        baseline = {name: r for name, r in readings.items()
                    if name not in self._previous or self._previous[name].host.timestamp < fresh_after}
        if baseline and settle_s > 0:
            self._previous.update(baseline)
            self._sleep(settle_s)
            again = self._read_all({name: targets[name] for name in baseline}, report)
            readings = {name: r for name, r in readings.items() if name not in baseline} | again
        rows = []
        for name, reading in sorted(readings.items()):
            before = self._previous.get(name)
            self._previous[name] = reading
            if before is None:
                continue
            written = samples_between(name, before, reading)
            report.written[name] = len(written)
            rows += written
        for name in report.skipped:
            self._previous.pop(name, None)
        with self._db.session() as session:
            if rows:
                session.execute(sa.insert(LoadSample), rows)
            report.pruned = prune(session, to_datetime(self._clock() - self._settings.load_history_s))
        return report

    def newest_sample_age_s(self) -> float | None:
        """Seconds since the newest sample anyone wrote, None if there is none."""
        with self._db.reading() as session:
            newest = session.scalar(sa.select(sa.func.max(LoadSample.at)))
        return None if newest is None else (to_datetime(self._clock()) - newest).total_seconds()


def prune(session, before: dt.datetime) -> int:
    """Delete the samples older than `before`; how many."""
    return session.execute(sa.delete(LoadSample).where(LoadSample.at < before)).rowcount or 0


def sample_if_due(sampler: Sampler, interval_s: float) -> PassReport | None:
    """A pass, unless another sampler (another conductor) wrote samples within
    the last half interval: the fleet is then sampled about once per
    interval, not once per conductor. None when skipped."""
    age = sampler.newest_sample_age_s()
    if age is not None and age < interval_s / 2:
        return None
    report = sampler.sample(settle_s=min(1.0, interval_s / 4))
    for name, why in sorted(report.skipped.items()):
        LOG.warning("load sampler: host %s skipped: %s", name, why)
    return report


def run_sampler(sampler: Sampler, interval_s: float, stop: threading.Event, name: str = "sampler") -> None:
    """Sample every `interval_s` until `stop` is set. A failed pass (the
    database away) is logged and the next one tried."""
    while not stop.is_set():
        try:
            report = sample_if_due(sampler, interval_s)
            if report is not None:
                LOG.info("%s: %d sample(s) from %d host(s), %d skipped, %d pruned", name,
                         sum(report.written.values()), len(report.written), len(report.skipped), report.pruned)
        except Exception as exc:  # noqa: BLE001 - a sampler must outlive one bad pass
            LOG.warning("%s: sampling pass failed: %s", name, exc)
        stop.wait(interval_s)


def start_sampler_thread(db: Database, drivers: DriverRegistry, settings: Settings,
                         name: str = "sampler") -> Callable[[], None] | None:
    """Sample in a daemon thread every `load_sample_interval_s` (none when it
    is 0); returns the function that stops it."""
    interval = settings.load_sample_interval_s
    if interval <= 0:
        return None
    stop = threading.Event()
    thread = threading.Thread(target=run_sampler, args=(Sampler(db, drivers, settings), interval, stop, name),
                              name=f"livemig-{name}", daemon=True)
    thread.start()

    def stop_sampling() -> None:
        stop.set()
        thread.join(timeout=5)

    return stop_sampling
