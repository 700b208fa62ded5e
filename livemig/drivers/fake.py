"""A stateful in-memory-like hypervisor for fast tests and the no-libvirt demo.

Each fake host is a JSON file named by its URI (`fake:///dir/host-a.json`);
all hosts of one fake cloud live in one directory, so the CLI, runners and
conductors in separate processes see one world. Each host has its own file
lock, as each real hypervisor is its own daemon: an operation locks the hosts
it works on and their migration partners, all at once and in name order (so
two operations never wait on each other in a cycle).

A migration progresses with wall-clock time (`migration_seconds` on the
source host): like a real hypervisor it carries on while its controller is
dead, and completes the next time anybody looks. Faults are injected per host
and operation (`inject_fault`) and are consumed as they fire.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import os
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from livemig.drivers.base import (
    AbortCheck, DiskInfo, DomainInfo, DomainStats, Driver, DriverError, FilterConflict, HostFacts, HostStats,
    DiskImage, InterfaceInfo, MigrationAborted, MigrationOptions, MigrationProgress, MigrationResult,
    MigrationTimedOut, ProgressCallback, SourcePaused,
)
from livemig.drivers import fake_copy, load_profiles
from livemig.drivers.convergence import (
    PAUSED, POST_COPY, PRE_COPY, SET_DOWNTIME, START_POST_COPY, SUSPEND, ConvergenceControl, Step,
)
from livemig.errors import HostUnreachable, InvalidInput
from livemig.states import DomainState

FAULT_KINDS = ("error", "unreachable", "crash", "dest-died", "hang")
# The pre-copy pass a fake migration ends in (it reports 1, 2, then 3).
FINAL_ITERATION = 3


def fake_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "fake" or not parsed.path.endswith(".json"):
        raise InvalidInput(f"malformed fake host URI {uri!r} (expected fake:///DIR/NAME.json)")
    return Path(parsed.path)


def fake_uri(directory: Path | str, hostname: str) -> str:
    return f"fake://{Path(directory).resolve()}/{hostname}.json"


def new_host_record(hostname: str, *, vcpus: int = 16, memory_mb: int = 32768, disk_gb: int = 500,
                    cpu_models: tuple[str, ...] = ("qemu64", "Haswell", "Skylake-Server"),
                    hypervisor_version: int = 7002000, bridges: tuple[str, ...] = ("br-guests",),
                    migration_seconds: float = 0.3) -> dict[str, Any]:
    return {
        "hostname": hostname, "vcpus": vcpus, "memory_mb": memory_mb, "disk_gb": disk_gb,
        "cpu_models": list(cpu_models), "arch": "x86_64", "hypervisor_version": hypervisor_version,
        "bridges": list(bridges), "networks": [], "filters": {}, "secrets": {}, "reachable": True,
        "migration_seconds": migration_seconds, "domains": {}, "faults": [], "volume_portals": [],
        "calls": {},
    }


class _Unlocked(Exception):
    """An operation reached a host it has not locked: lock it too and start over."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


class _World:
    """The host files an operation holds locks on, loaded on demand."""

    def __init__(self, locked: frozenset[Path]):
        self.locked = locked
        self.hosts: dict[Path, dict[str, Any]] = {}
        self.dirty: set[Path] = set()

    def host(self, path: Path) -> dict[str, Any]:
        if path not in self.hosts:
            if path not in self.locked:
                raise _Unlocked(path)
            try:
                self.hosts[path] = json.loads(path.read_text())
            except FileNotFoundError:
                raise HostUnreachable(f"fake host {path.stem} does not exist ({path})") from None
            self._advance_jobs(path)
        return self.hosts[path]

    def touch(self, path: Path) -> None:
        self.dirty.add(path)

    def _advance_jobs(self, path: Path) -> None:
        # Finish (or notice) migrations that completed while nobody looked.
        record = self.hosts[path]
        for uuid, dom in list(record["domains"].items()):
            job = dom.get("job")
            if job:
                dest = self.host(Path(job["dest_path"]))  # its partner, locked with it
                if job.get("phase") == POST_COPY and uuid not in dest["domains"]:
                    self._post_copy_failed(path, uuid)
                    continue
                copy = job.get("copy")
                if copy is not None:
                    if fake_copy.advance(copy, time.time(), job["max_downtime_ms"], job.get("auto_converge")):
                        self._complete(path, uuid)
                    else:
                        self.touch(path)
                elif time.time() >= job["started"] + job["duration"]:
                    self._complete(path, uuid)
            elif dom.get("incoming_from"):
                src = Path(dom["incoming_from"])
                if src != path and src.exists():
                    self.host(src)

    def _post_copy_failed(self, src: Path, uuid: str) -> None:
        """The destination lost the guest after the switch (its QEMU died):
        as QEMU, the source keeps what it had, paused for good."""
        dom = self.hosts[src]["domains"][uuid]
        dom.pop("job")
        dom.update(state="paused", paused_reason="postcopy-failed", job_outcome="postcopy-failed")
        self.touch(src)

    def _complete(self, src: Path, uuid: str) -> None:
        source = self.hosts[src]
        dom = source["domains"][uuid]
        dest_path = Path(dom["job"]["dest_path"])
        dest = self.host(dest_path)
        incoming = dest["domains"].get(uuid)
        job = dom["job"]
        if incoming is not None:
            incoming["state"] = "running"
            incoming.pop("incoming_from", None)
            for path in job.get("copied_disks", []):
                # The storage copy: what the guest wrote arrives with it.
                dest["images"][path]["data"] = source.get("images", {}).get(path, {}).get("data", "")
            total = dom["memory_mb"] * 1024 * 1024
            copy = job.get("copy")
            if copy is not None:
                downtime_ms, iteration = copy["downtime_ms"], copy["pass"]
                elapsed_ms, processed = int((copy["done_at"] - job["started"]) * 1000), int(copy["copied"] * 2**20)
            else:
                iteration, elapsed_ms, processed = FINAL_ITERATION, int(job["duration"] * 1000), total
                end = job["started"] + job["duration"]
                downtime_ms = (fake_copy.POST_COPY_DOWNTIME_MS if job.get("phase") == "post-copy"
                               else int((end - job["paused_at"]) * 1000) if job.get("paused_at") else 25)
            incoming["last_downtime_ms"] = downtime_ms
            # What the completed job's stats report (a post-copy job's come
            # from the source's event: the destination has none).
            incoming["last_job"] = {"memory_total": total, "memory_processed": processed, "memory_remaining": 0,
                                    "iteration": iteration, "downtime_ms": downtime_ms, "elapsed_ms": elapsed_ms,
                                    "throttle_pct": fake_copy.throttle_of(job.get("auto_converge"), iteration),
                                    "phase": job.get("phase", "pre-copy")}
        del source["domains"][uuid]
        self.touch(src)
        self.touch(dest_path)

    def save(self) -> None:
        for path in self.dirty:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.hosts[path], separators=(",", ":"), sort_keys=True))
            os.replace(tmp, path)


@contextlib.contextmanager
def _host_locks(paths: frozenset[Path]) -> Iterator[None]:
    """Exclusive locks on these hosts' lock files, taken in name order."""
    files = []
    try:
        for path in sorted(paths):
            lock = open(path.parent / f".{path.name}.lock", "a")
            files.append(lock)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        for lock in reversed(files):
            lock.close()  # closing the file releases its lock


def _cpu_ns(load: dict[str, Any] | None, t: float) -> int:
    """A load's cumulative CPU counter at t: what it had when its curve was
    set, plus the curve's area since."""
    if not load:
        return 0
    since = load["since"]
    return int(load["cpu_base_ns"] + 1e9 * load_profiles.integral(load["cpu"], since, max(t, since)))


def _memory_mb(load: dict[str, Any] | None, t: float, default: float) -> float:
    return load_profiles.value_at(load["memory"], t) if load and load.get("memory") else default


def _aborted(reason: str, options: MigrationOptions) -> DriverError:
    if reason == "timeout":
        return MigrationTimedOut(f"migration did not complete within {options.timeout_s:.0f} s; aborted")
    if reason == "stall":
        return MigrationTimedOut(f"migration made no progress for {options.stall_s:g} s (it does not "
                                 f"converge); aborted")
    return MigrationAborted("migration aborted by request", code=78)


class FakeDriver(Driver):
    """The stateful fake. Stateless itself: the world is in the host files.

    Load: each domain, and each host's own overhead, follows a curve
    (`set_load`, livemig.drivers.load_profiles); an unset domain is idle and
    uses all its memory, an unset host has no overhead. A host's CPU counter
    is its overhead's plus its running domains' counters, so a domain that
    arrives or leaves makes it jump for one interval (a sampler sees a
    counter going backwards, as after a reboot); `clock` is the time the
    curves are read at (a test may give its own)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    # -- world management (used by tests, the demo and `livemig lab` for fakes)
    @contextlib.contextmanager
    def world(self, uri: str, *also: str) -> Iterator[tuple[_World, Path]]:
        """The host of `uri` (and of each URI in `also`), locked and loaded
        with their migration partners; changes are saved on the way out."""
        path = fake_path(uri)
        directory = path.parent
        directory.mkdir(parents=True, exist_ok=True)
        wanted = frozenset([path, *(fake_path(u) for u in also)])
        while True:
            with _host_locks(wanted):
                world = _World(wanted)
                try:
                    for host in sorted(wanted):
                        if host.exists():
                            world.host(host)
                except _Unlocked as more:
                    # A partner found under lock: start over holding it too
                    # (nothing was changed yet).
                    wanted = wanted | {more.path}
                    continue
                try:
                    yield world, path
                finally:
                    # Saved even when the operation raises: a real hypervisor's
                    # half-done work (an orphaned incoming domain) is real too.
                    world.save()
                return

    def create_host(self, uri: str, **kwargs: Any) -> None:
        path = fake_path(uri)
        with self.world(uri) as (world, _):
            world.hosts[path] = new_host_record(path.stem, **kwargs)
            world.touch(path)

    def update_host(self, uri: str, **changes: Any) -> None:
        with self.world(uri) as (world, path):
            world.host(path).update(changes)
            world.touch(path)

    def create_domain(self, uri: str, name: str, *, vcpus: int = 1, memory_mb: int = 512, disk_gb: int = 1,
                      project: str = "default", cpu_model: str = "qemu64", uuid: str | None = None,
                      disks: list[DiskInfo] | None = None, interfaces: list[InterfaceInfo] | None = None,
                      state: str = "running", group: str | None = None,
                      labels: dict[str, str] | None = None) -> str:
        import dataclasses

        uuid = uuid or str(uuidlib.uuid4())
        with self.world(uri) as (world, path):
            world.host(path)["domains"][uuid] = {
                "uuid": uuid, "name": name, "state": state, "vcpus": vcpus, "memory_mb": memory_mb,
                "disk_gb": disk_gb, "project": project, "cpu_model": cpu_model, "group": group,
                "labels": dict(labels or {}),
                "disks": [dataclasses.asdict(d) for d in disks or []],
                "interfaces": [dataclasses.asdict(i) for i in interfaces or []],
            }
            world.touch(path)
        return uuid

    def set_load(self, uri: str, uuid: str | None = None, *, cpu: dict[str, Any] | None = None,
                 memory: dict[str, Any] | None = None) -> None:
        """Give a domain (uuid None: the host's own overhead) a CPU curve (cores,
        at most its vCPUs) and a memory curve (MiB in use, at most its
        memory); a curve not given is kept. Its CPU counter carries on from
        where the old curve left it."""
        now = self.clock()
        with self.world(uri) as (world, path):
            host = world.host(path)
            if uuid is None:
                target, cpus, memory_mb = host, host["vcpus"], host["memory_mb"]
            else:
                target = host["domains"].get(uuid)
                if target is None:
                    raise InvalidInput(f"no domain {uuid} on fake host {host['hostname']}")
                cpus, memory_mb = target["vcpus"], target["memory_mb"]
            old = target.get("load") or {}
            target["load"] = {
                "cpu": load_profiles.check_profile(cpu, cpus) if cpu is not None
                else old.get("cpu", load_profiles.constant(0.0)),
                "memory": load_profiles.check_profile(memory, memory_mb) if memory is not None
                else old.get("memory"),
                "since": now, "cpu_base_ns": _cpu_ns(old, now)}
            world.touch(path)

    def inject_fault(self, uri: str, op: str, kind: str = "error", message: str = "injected fault",
                     times: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise InvalidInput(f"unknown fault kind {kind!r}")
        with self.world(uri) as (world, path):
            world.host(path)["faults"].append({"op": op, "kind": kind, "message": message, "times": times})
            world.touch(path)

    def suspend_domain(self, uri: str, uuid: str, reason: str = "user") -> None:
        """Pause a domain as an operator's `virsh suspend` (or an I/O error
        with werror=stop) does; a migration job of it keeps running."""
        with self.world(uri) as (world, path):
            dom = world.host(path)["domains"][uuid]
            dom.update(state="paused", paused_reason=reason)
            world.touch(path)

    def set_dirty_rate(self, uri: str, uuid: str, mib_s: float) -> None:
        """Make a domain busy: it dirties `mib_s` MiB of memory a second, and
        a migration of it is modelled pass by pass (fake_copy) over the
        host's link (`link_mib_s`, else as fast as migration_seconds says)
        or the migration's bandwidth cap."""
        with self.world(uri) as (world, path):
            world.host(path)["domains"][uuid]["dirty_mib_s"] = float(mib_s)
            world.touch(path)

    def start_job(self, uri: str, uuid: str, operation: str = "backup") -> None:
        """Start a job that is not a migration (a backup, a dump) on a domain."""
        with self.world(uri) as (world, path):
            world.host(path)["domains"][uuid]["other_job"] = {"operation": operation, "started": time.time()}
            world.touch(path)

    def write_to_image(self, uri: str, path: str, data: str) -> None:
        """What a guest writes to its local disk (carried by a storage copy)."""
        with self.world(uri) as (world, host_path):
            world.host(host_path)["images"][path]["data"] = data
            world.touch(host_path)

    def images_on(self, uri: str) -> dict[str, dict[str, Any]]:
        return self.raw_host(uri).get("images", {})

    def raw_host(self, uri: str) -> dict[str, Any]:
        with self.world(uri) as (world, path):
            return copy.deepcopy(world.host(path))

    def call_count(self, uri: str, op: str) -> int:
        return self.raw_host(uri)["calls"].get(op, 0)

    # -- helpers
    # Operations that change nothing: not counted, so that looking does not
    # rewrite the host's file (most of a fake migration's file writes were
    # lookups being counted).
    READ_ONLY_OPS = frozenset({"host_facts", "list_domains", "find_domain", "volume_reachable", "network_present",
                               "disk_image",
                               "host_stats", "domain_stats"})

    def _enter(self, world: _World, path: Path, op: str) -> dict[str, Any]:
        host = world.host(path)
        if op not in self.READ_ONLY_OPS:
            # Count side-effecting calls so tests can prove nothing ran twice.
            host["calls"][op] = host["calls"].get(op, 0) + 1
            world.touch(path)
        if not host.get("reachable", True):
            raise HostUnreachable(f"host {host['hostname']} is unreachable (connection refused)")
        for fault in host["faults"]:
            if fault["op"] == op and fault["times"] > 0:
                fault["times"] -= 1
                world.touch(path)
                if fault["kind"] == "unreachable":
                    raise HostUnreachable(f"host {host['hostname']} is unreachable: {fault['message']}")
                if fault["kind"] == "error":
                    raise DriverError(f"{op} on {host['hostname']}: {fault['message']}")
                return {"fault": fault["kind"], "message": fault["message"]}
        return {}

    @staticmethod
    def _domain_info(dom: dict[str, Any]) -> DomainInfo:
        return DomainInfo(
            uuid=dom["uuid"], name=dom["name"], state=DomainState(dom["state"]), vcpus=dom["vcpus"],
            memory_mb=dom["memory_mb"], disk_gb=dom["disk_gb"], project=dom["project"],
            cpu_model=dom.get("cpu_model"), group=dom.get("group"), labels=dict(dom.get("labels") or {}), disks=[DiskInfo(**d) for d in dom["disks"]],
            interfaces=[InterfaceInfo(**i) for i in dom["interfaces"]],
            migration_job_active=bool(dom.get("job")), incoming=bool(dom.get("incoming_from")),
        )

    # -- Driver interface
    def host_facts(self, uri: str) -> HostFacts:
        with self.world(uri) as (world, path):
            host = world.host(path)
            self._enter(world, path, "host_facts")
            return HostFacts(hostname=host["hostname"], vcpus=host["vcpus"], memory_mb=host["memory_mb"],
                             disk_gb=host["disk_gb"], cpu_model=host["cpu_models"][-1], arch=host["arch"],
                             hypervisor_version=host["hypervisor_version"], libvirt_version=9000000,
                             networks=sorted(set(host["bridges"]) | set(host["networks"])))

    def list_domains(self, uri: str) -> list[DomainInfo]:
        with self.world(uri) as (world, path):
            self._enter(world, path, "list_domains")
            return [self._domain_info(d) for d in world.host(path)["domains"].values()]

    def find_domain(self, uri: str, uuid: str) -> DomainInfo | None:
        with self.world(uri) as (world, path):
            self._enter(world, path, "find_domain")
            dom = world.host(path)["domains"].get(uuid)
            return self._domain_info(dom) if dom else None

    @staticmethod
    def _running(host: dict[str, Any]) -> list[dict[str, Any]]:
        # The paused copy an incoming migration makes does not run yet.
        return [d for d in host["domains"].values() if d["state"] == "running" and not d.get("incoming_from")]

    def host_stats(self, uri: str) -> HostStats:
        with self.world(uri) as (world, path):
            self._enter(world, path, "host_stats")
            host = world.host(path)
            now = self.clock()
            running = self._running(host)
            busy = _cpu_ns(host.get("load"), now) + sum(_cpu_ns(d.get("load"), now) for d in running)
            used = _memory_mb(host.get("load"), now, 0.0) + sum(
                _memory_mb(d.get("load"), now, d["memory_mb"]) for d in running)
            return HostStats(timestamp=now, cpus=host["vcpus"], cpu_busy_ns=busy,
                             memory_total_mb=float(host["memory_mb"]), memory_used_mb=min(used, host["memory_mb"]))

    def domain_stats(self, uri: str) -> list[DomainStats]:
        with self.world(uri) as (world, path):
            self._enter(world, path, "domain_stats")
            now = self.clock()
            return [DomainStats(uuid=d["uuid"], name=d["name"], timestamp=now, cpu_time_ns=_cpu_ns(d.get("load"), now),
                                memory_used_mb=_memory_mb(d.get("load"), now, d["memory_mb"]), vcpus=d["vcpus"])
                    for d in self._running(world.host(path))]

    def cpu_compatible(self, source_uri: str, dest_uri: str, uuid: str) -> tuple[bool, str]:
        with self.world(source_uri, dest_uri) as (world, src):
            dom = world.host(src)["domains"].get(uuid)
            if dom is None:
                raise DriverError(f"domain {uuid} not found on {world.host(src)['hostname']}", code=42)
            dest = world.host(fake_path(dest_uri))
            model = dom.get("cpu_model") or "qemu64"
            if model in dest["cpu_models"]:
                return True, ""
            return False, f"CPU model {model} is not supported by {dest['hostname']}"

    def destroy_domain(self, uri: str, uuid: str) -> bool:
        with self.world(uri) as (world, path):
            self._enter(world, path, "destroy_domain")
            host = world.host(path)
            if uuid not in host["domains"]:
                return False
            del host["domains"][uuid]
            return True

    def volume_reachable(self, uri: str, disk: DiskInfo) -> tuple[bool, str]:
        with self.world(uri) as (world, path):
            host = world.host(path)
            self._enter(world, path, "volume_reachable")
            if disk.kind != "network":
                return True, ""
            blocked = set(host.get("unreachable_portals", []))
            for h, port in disk.hosts:
                if f"{h}:{port}" in blocked:
                    return False, f"{h}:{port} is not reachable from {host['hostname']}"
            return True, ""

    # -- disk images: host["images"] maps a path to its format, size,
    # backing and "data" (what the guest wrote, for tests to read back).
    def disk_image(self, uri: str, path: str) -> DiskImage | None:
        with self.world(uri) as (world, host_path):
            self._enter(world, host_path, "disk_image")
            image = world.host(host_path).get("images", {}).get(path)
            if image is None:
                return None
            return DiskImage(path, image["format"], image["virtual_size"], image.get("backing"),
                             image.get("backing_format"))

    def create_disk_image(self, uri: str, image: DiskImage) -> None:
        with self.world(uri) as (world, host_path):
            self._enter(world, host_path, "create_disk_image")
            images = world.host(host_path).setdefault("images", {})
            if image.path in images:
                raise DriverError(f"storage volume {image.path} already exists", code=90)
            if image.backing and image.backing not in images:
                raise DriverError(f"backing image {image.backing} not found", code=38)
            images[image.path] = {"format": image.format, "virtual_size": image.virtual_size,
                                  "backing": image.backing, "backing_format": image.backing_format, "data": ""}
            world.touch(host_path)

    def delete_disk_image(self, uri: str, path: str) -> bool:
        with self.world(uri) as (world, host_path):
            self._enter(world, host_path, "delete_disk_image")
            removed = world.host(host_path).get("images", {}).pop(path, None) is not None
            world.touch(host_path)
            return removed

    def secret_defined(self, uri: str, usage: str) -> bool:
        with self.world(uri) as (world, path):
            return usage in world.host(path)["secrets"]

    def copy_secret(self, source_uri: str, dest_uri: str, usage: str, secret_type: str,
                    fallback_value: bytes | None = None) -> None:
        with self.world(source_uri, dest_uri) as (world, src):
            dst = fake_path(dest_uri)
            self._enter(world, dst, "copy_secret")
            secret = world.host(src)["secrets"].get(usage)
            if secret is None:
                raise DriverError(f"no secret with usage {usage!r} on {world.host(src)['hostname']}", code=66)
            value = secret["value"]
            if secret.get("private"):
                if fallback_value is None:
                    raise DriverError(f"secret {usage!r} is private and no credential is registered", code=65)
                value = fallback_value.decode()
            world.host(dst)["secrets"][usage] = {"type": secret_type, "value": value,
                                                 "private": secret.get("private", False)}
            world.touch(dst)

    def undefine_secret(self, uri: str, usage: str) -> bool:
        with self.world(uri) as (world, path):
            self._enter(world, path, "undefine_secret")
            return world.host(path)["secrets"].pop(usage, None) is not None

    def network_present(self, uri: str, interface: InterfaceInfo) -> tuple[bool, str]:
        with self.world(uri) as (world, path):
            host = world.host(path)
            self._enter(world, path, "network_present")
            if interface.bridge and interface.bridge not in host["bridges"]:
                return False, f"bridge {interface.bridge} does not exist on {host['hostname']}"
            if interface.network and interface.network not in host["networks"]:
                return False, f"network {interface.network} does not exist on {host['hostname']}"
            return True, ""

    def filter_xml(self, uri: str, name: str) -> str | None:
        with self.world(uri) as (world, path):
            return world.host(path)["filters"].get(name)

    def define_filter(self, uri: str, xml: str) -> None:
        import xml.etree.ElementTree as ET

        name = ET.fromstring(xml).get("name")
        with self.world(uri) as (world, path):
            self._enter(world, path, "define_filter")
            host = world.host(path)
            existing = host["filters"].get(name)
            if existing is not None and existing != xml:
                raise FilterConflict(f"filter {name} on {host['hostname']} has different rules")
            host["filters"][name] = xml

    def undefine_filter(self, uri: str, name: str) -> bool:
        with self.world(uri) as (world, path):
            self._enter(world, path, "undefine_filter")
            host = world.host(path)
            for dom in host["domains"].values():
                if dom["state"] in ("running", "paused") and any(
                        i.get("filter") == name for i in dom["interfaces"]):
                    raise DriverError(f"nwfilter {name} is in use", code=55)
            return host["filters"].pop(name, None) is not None

    # -- migration
    def _start_migration(self, source_uri: str, dest_uri: str, uuid: str,
                         options: MigrationOptions | None = None) -> None:
        options = options or MigrationOptions()
        with self.world(source_uri, dest_uri) as (world, src):
            dst = fake_path(dest_uri)
            if src.parent != dst.parent:
                raise InvalidInput("fake hosts of one cloud must share a directory")
            fault = self._enter(world, src, "migrate")
            source = world.host(src)
            dest = world.host(dst)
            if not dest.get("reachable", True):
                raise DriverError(f"unable to connect to {dest['hostname']}: Connection refused", code=38)
            dom = source["domains"].get(uuid)
            if dom is None:
                raise DriverError(f"domain {uuid} not found on {source['hostname']}", code=42)
            if dom["state"] != "running":
                raise DriverError(f"domain {dom['name']} is not running", code=55)
            if uuid in dest["domains"]:
                raise DriverError(f"domain {dom['name']} already exists on {dest['hostname']}", code=9)
            for iface in dom["interfaces"]:
                if iface.get("bridge") and iface["bridge"] not in dest["bridges"]:
                    raise DriverError(f"Cannot get interface MTU on '{iface['bridge']}': No such device", 38)
                if iface.get("filter") and iface["filter"] not in dest["filters"]:
                    raise DriverError(f"referenced filter '{iface['filter']}' is missing", code=1)
            copied = set(options.destination.copy_disks) if options.copy_storage in ("full", "incremental") \
                else set()
            for disk in dom["disks"]:
                if disk["target"] in copied:
                    # As libvirt: the destination image must be there, alike.
                    image = dest.get("images", {}).get(disk["source"])
                    mine = source.get("images", {}).get(disk["source"])
                    if image is None:
                        raise DriverError(f"Storage volume not found: no storage vol with matching path "
                                          f"'{disk['source']}'", code=49)
                    if mine is not None and image["virtual_size"] != mine["virtual_size"]:
                        raise DriverError("Source and target image have different sizes", code=1)
                    continue
                # As libvirt: a local disk migrates only if told it is shared.
                if disk["kind"] in ("file", "block") and disk.get("source") and not options.shared_storage:
                    raise DriverError("Unsafe migration: Migration may lead to data corruption if disks use "
                                      "cache other than none or directsync", code=81)
                if disk.get("secret_usage") and disk["secret_usage"] not in dest["secrets"]:
                    raise DriverError(f"no secret with matching usage '{disk['secret_usage']}'", code=66)
            dom.pop("job_outcome", None)
            incoming = copy.deepcopy(dom)
            incoming.update(state="paused", incoming_from=str(src), migrated_unsafe=options.shared_storage,
                            # How the stream travelled, for tests to read.
                            migrated_with=dataclasses.asdict(options.destination))
            incoming.pop("job", None)
            dest["domains"][uuid] = incoming
            world.touch(dst)
            kind = fault.get("fault")
            if kind == "dest-died":
                # The destination daemon died: the guest stays on the source and
                # a paused incoming QEMU is orphaned on the destination.
                raise DriverError(f"client socket is closed: {fault['message']}", code=1)
            if kind == "crash":
                dom["state"] = "crashed"
                del dest["domains"][uuid]
                raise DriverError(f"domain crashed during migration: {fault['message']}", code=1)
            duration = 3600.0 if kind == "hang" else float(source.get("migration_seconds", 0.3))
            now = time.time()
            dom["job"] = {"dest_path": str(dst), "started": now, "duration": duration,
                          "max_downtime_ms": options.initial_downtime_ms(), "phase": PRE_COPY,
                          "auto_converge": [options.auto_converge_initial, options.auto_converge_increment]
                          if options.auto_converge else None, "post_copy": options.post_copy_allowed,
                          "copied_disks": sorted(d["source"] for d in dom["disks"] if d["target"] in copied)}
            if dom.get("dirty_mib_s") and kind != "hang":
                # A busy guest: the copy is modelled (fake_copy); a quiet one
                # takes the host's migration_seconds.
                link = source.get("link_mib_s") or dom["memory_mb"] / max(duration, 0.001)
                bandwidth = options.bandwidth_mib_s or link
                dom["job"]["copy"] = fake_copy.new_copy(dom["memory_mb"], bandwidth, dom["dirty_mib_s"],
                                                        options.postcopy_bandwidth_mib_s, now)

    def _job_progress(self, source_uri: str, uuid: str) -> MigrationProgress | None:
        with self.world(source_uri) as (world, src):
            dom = world.host(src)["domains"].get(uuid)
            if not dom or not dom.get("job"):
                return None
            job = dom["job"]
            elapsed = time.time() - job["started"]
            total = dom["memory_mb"] * 1024 * 1024
            copy = job.get("copy")
            if copy is not None:
                remaining = fake_copy.remaining_bytes(copy)
                processed = int(copy["copied"] * 2**20)
                iteration, bps = copy["pass"], int(copy["bandwidth"] * 2**20)
                fraction = processed / (processed + remaining) if processed + remaining else 0.0
            else:
                fraction = min(1.0, elapsed / job["duration"]) if job["duration"] else 1.0
                processed, remaining = int(total * fraction), int(total * (1 - fraction))
                iteration = min(FINAL_ITERATION, 1 + int(fraction * FINAL_ITERATION))
                bps = int(total / max(job["duration"], 0.001))
            post_copy = job.get("phase") == POST_COPY
            return MigrationProgress(fraction=min(fraction, 0.99), memory_total=total, memory_processed=processed,
                                     memory_remaining=remaining, memory_bps=bps, iteration=iteration,
                                     expected_downtime_ms=25, elapsed_ms=int(elapsed * 1000),
                                     phase=job.get("phase", PRE_COPY),
                                     throttle_pct=fake_copy.throttle_of(job.get("auto_converge"), iteration),
                                     postcopy_requests=int(processed / 4096) if post_copy else None)

    def _source_state(self, source_uri: str, uuid: str) -> tuple[str | None, str | None, bool]:
        with self.world(source_uri) as (world, src):
            dom = world.host(src)["domains"].get(uuid)
            if not dom:
                return None, None, False
            return dom["state"], dom.get("paused_reason"), bool(dom.get("job"))

    def _set_max_downtime(self, source_uri: str, uuid: str, downtime_ms: int) -> bool:
        with self.world(source_uri) as (world, src):
            dom = world.host(src)["domains"].get(uuid)
            if dom and dom.get("job") and dom["job"].get("max_downtime_ms") != downtime_ms:
                dom["job"]["max_downtime_ms"] = downtime_ms
                world.touch(src)
            return bool(dom and dom.get("job"))

    def _start_post_copy(self, source_uri: str, uuid: str) -> bool:
        """As migrateStartPostCopy: the guest goes on running on the
        destination, the source keeps what is not copied yet (paused)."""
        with self.world(source_uri) as (world, src):
            dom = world.host(src)["domains"].get(uuid)
            if not dom or not dom.get("job") or not dom["job"].get("post_copy"):
                return False  # libvirt: the job was not started able to switch
            job = dom["job"]
            if job["phase"] == POST_COPY:
                return True
            job["phase"] = POST_COPY
            if job.get("copy") is not None:
                fake_copy.start_post_copy(job["copy"])
            dom.update(state="paused", paused_reason="postcopy")
            incoming = world.host(Path(job["dest_path"]))["domains"].get(uuid)
            if incoming is not None:
                incoming["state"] = "running"
            world.touch(src)
            world.touch(Path(job["dest_path"]))
            return True

    def _suspend_for_completion(self, source_uri: str, uuid: str) -> bool:
        """As virDomainSuspend during a migration: the guest stops dirtying
        memory, libvirt calls the pause the migration's."""
        with self.world(source_uri) as (world, src):
            dom = world.host(src)["domains"].get(uuid)
            if not dom or not dom.get("job"):
                return False
            job, now = dom["job"], time.time()
            job.update(phase=PAUSED, paused_at=now)
            if job.get("copy") is not None:
                fake_copy.pause(job["copy"], now)
            dom.update(state="paused", paused_reason="migration")
            world.touch(src)
            return True

    def _resume_source(self, source_uri: str, uuid: str) -> None:
        """The migration we paused the guest for did not complete: it runs on."""
        with self.world(source_uri) as (world, src):
            dom = world.host(src)["domains"].get(uuid)
            if dom and dom["state"] == "paused" and dom.get("paused_reason") == "migration":
                dom["state"] = "running"
                dom.pop("paused_reason", None)
                world.touch(src)

    def _apply(self, source_uri: str, uuid: str, step: Step) -> bool:
        if step.action == SET_DOWNTIME:
            return self._set_max_downtime(source_uri, uuid, step.downtime_ms)
        if step.action == START_POST_COPY:
            return self._start_post_copy(source_uri, uuid)
        if step.action == SUSPEND:
            return self._suspend_for_completion(source_uri, uuid)
        self.abort_migration(source_uri, uuid)
        return True

    def _poll(self, source_uri: str, uuid: str, options: MigrationOptions, on_progress: ProgressCallback | None,
              should_abort: AbortCheck | None) -> str:
        """Follows the job to its end, taking the convergence steps
        (livemig.drivers.convergence) as the libvirt driver does: on the
        job's own clock, so a job followed after a restart keeps its
        schedule; every change of the job is preceded by
        options.may_change_job(). Returns the phase the job ended in."""
        control = ConvergenceControl(options)
        while True:
            progress = self._job_progress(source_uri, uuid)
            if progress is None:
                return control.phase
            control.phase = progress.phase or control.phase
            if on_progress:
                on_progress(progress)
            state, reason, _ = self._source_state(source_uri, uuid)
            if state == "paused" and reason not in ("migration", "postcopy"):
                options.may_change_job()
                self.abort_migration(source_uri, uuid)
                raise SourcePaused(f"the VM was paused on its source ({reason}) during the migration; "
                                   f"the migration was aborted")
            control.take_steps(progress, progress.elapsed_ms / 1000.0,
                               abort_requested=bool(should_abort and should_abort()),
                               apply=lambda step: self._apply(source_uri, uuid, step))
            if control.aborting is not None:
                if control.paused_by_us:
                    self._resume_source(source_uri, uuid)
                raise _aborted(control.aborting, options)
            time.sleep(min(options.poll_interval_s, 0.05))

    def _completed(self, source_uri: str, dest_uri: str, uuid: str) -> MigrationResult | None:
        with self.world(dest_uri, source_uri) as (world, dst):
            dom = world.host(dst)["domains"].get(uuid)
            left = world.host(fake_path(source_uri))["domains"].get(uuid)
            if left is not None and left.get("job_outcome") == "aborted":
                raise MigrationAborted("migration job was aborted; the domain stays on the source", code=78)
            if left is not None and left.get("job_outcome") == "postcopy-failed":
                raise DriverError("post-copy failed: the destination lost the VM after the switch", code=1)
            if dom is None or "last_job" not in dom:
                return None
            job = dom["last_job"]
            final = MigrationProgress(fraction=1.0, memory_total=job["memory_total"],
                                      memory_processed=job["memory_processed"], memory_remaining=0,
                                      iteration=job["iteration"], expected_downtime_ms=job["downtime_ms"],
                                      elapsed_ms=job["elapsed_ms"], throttle_pct=job.get("throttle_pct"),
                                      phase=job.get("phase", PRE_COPY))
            return MigrationResult(downtime_ms=job["downtime_ms"], elapsed_ms=job["elapsed_ms"], final=final,
                                   phase=final.phase)

    def migrate(self, source_uri: str, dest_uri: str, uuid: str, options: MigrationOptions,
                on_progress: ProgressCallback | None = None,
                should_abort: AbortCheck | None = None) -> MigrationResult:
        started = time.monotonic()
        self._start_migration(source_uri, dest_uri, uuid, options)
        phase = self._poll(source_uri, uuid, options, on_progress, should_abort)
        result = self._completed(source_uri, dest_uri, uuid)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        if result is None:
            return MigrationResult(downtime_ms=None, elapsed_ms=elapsed_ms, phase=phase)
        result.elapsed_ms = elapsed_ms
        return result

    def wait_for_migration_job(self, source_uri: str, uuid: str, options: MigrationOptions,
                               on_progress: ProgressCallback | None = None,
                               should_abort: AbortCheck | None = None,
                               dest_uri: str | None = None) -> MigrationResult | None:
        self._poll(source_uri, uuid, options, on_progress, should_abort)
        return self._completed(source_uri, dest_uri, uuid) if dest_uri else None

    def abort_migration(self, source_uri: str, uuid: str) -> bool:
        with self.world(source_uri) as (world, src):
            dom = world.host(src)["domains"].get(uuid)
            if not dom or not dom.get("job"):
                return False
            if dom["job"].get("phase") == POST_COPY:
                return False  # libvirt: "cannot abort migration in post-copy mode"
            dst = Path(dom.pop("job")["dest_path"])
            dom["job_outcome"] = "aborted"
            world.host(dst)["domains"].pop(uuid, None)
            world.touch(src)
            world.touch(dst)
            return True
