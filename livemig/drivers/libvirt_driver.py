"""The libvirt driver: libvirt-python against real libvirt daemons.

One cached connection per host URI and thread, with keepalive so that a dead
host is noticed; a second connection monitors a running migration job."""
from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from livemig.drivers.base import (
    AbortCheck, DiskImage, DiskInfo, DomainInfo, DomainStats, Driver, DriverError, FilterConflict, HostFacts,
    HostStats, InterfaceInfo,
    MigrationAborted, MigrationOptions, MigrationProgress, MigrationResult, MigrationTimedOut, ProgressCallback,
    SourcePaused,
)
from livemig.drivers.convergence import (
    POST_COPY, SET_DOWNTIME, START_POST_COPY, SUSPEND, ConvergenceControl, Step,
)
from livemig.drivers.domain_xml import (
    parse_cpu_model, parse_disks, parse_group, parse_interfaces, parse_labels, parse_project, strip_uuid,
)
from livemig.drivers import libvirt_images
from livemig.drivers.libvirt_params import migration_call
from livemig.errors import HostUnreachable, LivemigError
from livemig.states import DomainState

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING, libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED, libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF, libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PMSUSPENDED,
}
_SECRET_USAGE = {"iscsi": libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, "ceph": libvirt.VIR_SECRET_USAGE_TYPE_CEPH,
                 "volume": libvirt.VIR_SECRET_USAGE_TYPE_VOLUME}
_SECRET_USAGE_ELEMENT = {"iscsi": "target", "ceph": "name", "volume": "volume"}
_UNREACHABLE_CODES = {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT,
                      libvirt.VIR_ERR_AUTH_FAILED}

# Jobs that are migrations: any other job (backup, dump, save, snapshot) is
# not ours to follow or abort.
_MIGRATION_OPERATIONS = frozenset({libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT,
                                   libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN})
# Pauses that belong to the migration itself (switchover, post-copy); any
# other pause of the source (an operator, an I/O error, a watchdog) makes us
# abort the migration rather than carry a stopped VM to another host.
_MIGRATION_PAUSES = frozenset({libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY,
                               libvirt.VIR_DOMAIN_PAUSED_STARTING_UP})
_PAUSE_REASONS = {libvirt.VIR_DOMAIN_PAUSED_USER: "paused by a user", libvirt.VIR_DOMAIN_PAUSED_IOERROR:
                  "paused on an I/O error", libvirt.VIR_DOMAIN_PAUSED_WATCHDOG: "paused by its watchdog",
                  libvirt.VIR_DOMAIN_PAUSED_CRASHED: "paused after a crash"}

_event_loop_started = False
_event_loop_lock = threading.Lock()


def _start_event_loop() -> None:
    """libvirt needs a running event loop for connection keepalives."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        # libvirt-python prints every error to stderr otherwise; we raise them.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _event_loop_started = True


def _migration_job_stats(dom: libvirt.virDomain) -> dict[str, Any] | None:
    """The running job's stats if it is a migration, else None."""
    stats = dom.jobStats(0)
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    if stats.get("operation") not in _MIGRATION_OPERATIONS:
        return None
    return stats


def _progress(stats: dict[str, Any], completed: bool = False) -> MigrationProgress:
    total = stats.get("memory_total", 0)
    processed = stats.get("memory_processed", 0)
    remaining = stats.get("memory_remaining", 0)
    fraction = processed / (processed + remaining) if processed + remaining else 0.0
    return MigrationProgress(fraction=1.0 if completed else min(fraction, 0.99), memory_total=total,
                             memory_processed=processed, memory_remaining=remaining,
                             memory_bps=stats.get("memory_bps", 0), iteration=stats.get("memory_iteration", 0),
                             expected_downtime_ms=stats.get("downtime"), elapsed_ms=stats.get("time_elapsed", 0),
                             throttle_pct=stats.get(libvirt.VIR_DOMAIN_JOB_AUTO_CONVERGE_THROTTLE),
                             postcopy_requests=stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_POSTCOPY_REQS))


def _result_of(stats: dict[str, Any]) -> MigrationResult:
    """A completed job's figures (jobStats COMPLETED, or the parameters of
    the source's job-completed event: the same names)."""
    return MigrationResult(downtime_ms=stats.get("downtime"), elapsed_ms=stats.get("time_elapsed", 0),
                           final=_progress(stats, completed=True))


class _CompletedJobEvent:
    """The source's VIR_DOMAIN_EVENT_ID_JOB_COMPLETED for one domain: after
    a post-copy migration the only place with the job's figures (the
    destination's completed stats are empty)."""

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain):
        self._conn = conn
        self._params: dict[str, Any] | None = None
        self._arrived = threading.Event()
        self._callback_id: int | None = None
        try:
            self._callback_id = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                                                            self._on_event, None)
        except libvirt.libvirtError:
            pass  # no events on this connection: the destination's stats are used

    def _on_event(self, _conn: libvirt.virConnect, _dom: libvirt.virDomain, params: dict[str, Any],
                  _opaque: Any) -> None:
        self._params = dict(params)
        self._arrived.set()

    def wait(self, timeout_s: float) -> dict[str, Any] | None:
        """The event's parameters; it is dispatched by the event loop thread,
        possibly just after the migration call returned."""
        if self._callback_id is None:
            return None
        self._arrived.wait(timeout_s)
        return self._params

    def close(self) -> None:
        if self._callback_id is not None:
            try:
                self._conn.domainEventDeregisterAny(self._callback_id)
            except libvirt.libvirtError:
                pass  # the connection closed: its callbacks went with it
            self._callback_id = None


# How often a paused post-copy is asked to resume while it stays paused.
POST_COPY_RESUME_INTERVAL_S = 5.0

# libvirt gives a guest suspended during an outgoing migration (`virsh
# suspend`) the reason "migration", as it does the switchover's own pause; a
# switchover lasts well under a second, so a "migration" pause that lasts
# longer while the job still runs is someone else's.
SWITCHOVER_GRACE_S = 5.0


class _PauseWatch:
    """Tells a pause of the source by someone else from the migration's own."""

    def __init__(self, control: ConvergenceControl | None = None) -> None:
        self._migration_pause_since: float | None = None
        # Our own pause (force-complete) and the post-copy phase are the
        # migration's, however long they last.
        self._control = control

    def foreign_pause(self, dom: libvirt.virDomain) -> str | None:
        """Why the domain is paused, if something other than the migration paused it."""
        state, reason = dom.state()
        if state != libvirt.VIR_DOMAIN_PAUSED:
            self._migration_pause_since = None
            return None
        if self._control is not None and (self._control.paused_by_us or self._control.switched):
            return None
        if reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
            now = time.monotonic()
            if self._migration_pause_since is None:
                self._migration_pause_since = now
            if now - self._migration_pause_since > SWITCHOVER_GRACE_S:
                return "paused (suspended during the migration)"
            return None
        if reason in _MIGRATION_PAUSES:
            return None
        return _PAUSE_REASONS.get(reason, f"paused (reason {reason})")


def _guest_networks(conn: libvirt.virConnect) -> list[str]:
    """The active host interfaces (bridges among them) and libvirt networks:
    what a guest interface may name as its bridge or network. Empty when the
    host's interfaces cannot be listed: unknown, not "none"."""
    names: set[str] = set()
    try:
        names.update(i.name() for i in conn.listAllInterfaces(libvirt.VIR_CONNECT_LIST_INTERFACES_ACTIVE))
    except libvirt.libvirtError:
        return []  # no interface backend on this host: its bridges are unknown
    try:
        for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE):
            names.add(net.name())
    except libvirt.libvirtError:
        pass
    return sorted(names)


def _domain_memory_used_kib(values: dict[str, Any]) -> float:
    """What the guest says it uses (its balloon driver's available less
    unused), else the QEMU process's resident size, else its balloon size: a
    guest without a balloon driver reports nothing."""
    if "balloon.available" in values and "balloon.unused" in values:
        return max(0, values["balloon.available"] - values["balloon.unused"])
    return values.get("balloon.rss") or values.get("balloon.current", 0)


def _error(exc: libvirt.libvirtError, what: str) -> DriverError:
    return DriverError(f"{what}: {exc.get_error_message()}", code=exc.get_error_code())


class LibvirtDriver(Driver):
    def __init__(self, keepalive_interval: int = 5, keepalive_count: int = 3):
        _start_event_loop()
        # libvirt connections are thread-safe: one per host for the process
        # (only a blocking migration call gets its own).
        self._conns: dict[str, libvirt.virConnect] = {}
        self._conns_lock = threading.Lock()
        self._keepalive = (keepalive_interval, keepalive_count)

    # -- connections
    def _open(self, uri: str) -> libvirt.virConnect:
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HostUnreachable(f"cannot connect to {uri}: {exc.get_error_message()}") from None
        try:
            conn.setKeepAlive(*self._keepalive)
        except libvirt.libvirtError:
            pass  # local (unix socket) connections do not support keepalive
        return conn

    def conn(self, uri: str) -> libvirt.virConnect:
        with self._conns_lock:
            conn = self._conns.get(uri)
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                self._conns.pop(uri, None)
            conn = self._conns[uri] = self._open(uri)
            return conn

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass  # already broken: nothing left to release

    def _call(self, uri: str, what: str, fn, *args: Any) -> Any:
        try:
            return fn(self.conn(uri), *args)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _UNREACHABLE_CODES and not self._alive(uri):
                raise HostUnreachable(f"host {uri} is unreachable: {exc.get_error_message()}") from None
            raise _error(exc, what) from None

    def _alive(self, uri: str) -> bool:
        with self._conns_lock:
            conn = self._conns.pop(uri, None)
        try:
            self.conn(uri)
            return True
        except HostUnreachable:
            return False
        finally:
            if conn is not None:
                try:
                    conn.close()
                except libvirt.libvirtError:
                    pass

    # -- hosts and domains
    def host_facts(self, uri: str) -> HostFacts:
        def facts(conn: libvirt.virConnect) -> HostFacts:
            info = conn.getInfo()
            caps = ET.fromstring(conn.getCapabilities())
            model = caps.findtext("./host/cpu/model")
            arch = caps.findtext("./host/cpu/arch") or info[0]
            disk_gb = 0
            try:
                pool = conn.storagePoolLookupByName("default")
                disk_gb = int(pool.info()[1] / 2**30)
            except libvirt.libvirtError:
                pass
            return HostFacts(hostname=conn.getHostname(), vcpus=info[2], memory_mb=info[1], disk_gb=disk_gb,
                             cpu_model=model, arch=arch, hypervisor_version=conn.getVersion(),
                             libvirt_version=conn.getLibVersion(), networks=_guest_networks(conn))

        return self._call(uri, "reading host facts", facts)

    def _domain_info(self, dom: libvirt.virDomain) -> DomainInfo:
        root = ET.fromstring(dom.XMLDesc(0))
        state = _STATES.get(dom.state()[0], DomainState.OTHER)
        disks = parse_disks(root)
        disk_gb = 0
        for disk in disks:
            if disk.kind == "file":
                try:
                    disk.size_gb = dom.blockInfo(disk.target)[0] / 2**30
                    disk_gb += int(round(disk.size_gb))
                except libvirt.libvirtError:
                    pass
        job_active = False
        if state in (DomainState.RUNNING, DomainState.PAUSED):
            try:
                job_active = _migration_job_stats(dom) is not None
            except libvirt.libvirtError:
                pass
        # The paused copy a migration starts on its destination: transient
        # until the migration finishes (PERSIST_DEST defines it at the end).
        raw_state, raw_reason = dom.state()
        incoming = (raw_state == libvirt.VIR_DOMAIN_PAUSED and raw_reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION
                    and not dom.isPersistent())
        return DomainInfo(uuid=dom.UUIDString(), name=dom.name(), state=state, vcpus=int(root.findtext("vcpu", "1")),
                          memory_mb=int(dom.maxMemory() / 1024), disk_gb=disk_gb, project=parse_project(root),
                          cpu_model=parse_cpu_model(root), group=parse_group(root), labels=parse_labels(root), disks=disks, interfaces=parse_interfaces(root),
                          migration_job_active=job_active, incoming=incoming)

    def list_domains(self, uri: str) -> list[DomainInfo]:
        def domains(conn: libvirt.virConnect) -> list[DomainInfo]:
            found = []
            for dom in conn.listAllDomains(0):
                try:
                    found.append(self._domain_info(dom))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # vanished while listing
                        raise
            return found

        return self._call(uri, "listing domains", domains)

    # -- load
    def host_stats(self, uri: str) -> HostStats:
        def stats(conn: libvirt.virConnect) -> HostStats:
            cpu = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
            memory = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
            now = time.time()
            total_kib = memory.get("total", 0)
            # Buffers and page cache are reclaimable: not "in use" for placement.
            used_kib = total_kib - sum(memory.get(k, 0) for k in ("free", "buffers", "cached"))
            return HostStats(timestamp=now, cpus=conn.getInfo()[2],
                             cpu_busy_ns=cpu.get("kernel", 0) + cpu.get("user", 0),
                             memory_total_mb=total_kib / 1024, memory_used_mb=max(0, used_kib) / 1024)

        return self._call(uri, "reading host stats", stats)

    def domain_stats(self, uri: str) -> list[DomainStats]:
        def stats(conn: libvirt.virConnect) -> list[DomainStats]:
            # One call for every running domain: cpu.time is the QEMU
            # process's (vCPUs, emulator and I/O threads), what the host pays.
            records = conn.getAllDomainStats(
                libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU,
                libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING)
            now = time.time()
            return [DomainStats(uuid=dom.UUIDString(), name=dom.name(), timestamp=now,
                                cpu_time_ns=int(values.get("cpu.time", 0)),
                                memory_used_mb=_domain_memory_used_kib(values) / 1024,
                                vcpus=int(values.get("vcpu.current", 0)))
                    for dom, values in records]

        return self._call(uri, "reading domain stats", stats)

    def _lookup(self, conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
        try:
            return conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def find_domain(self, uri: str, uuid: str) -> DomainInfo | None:
        def find(conn: libvirt.virConnect) -> DomainInfo | None:
            dom = self._lookup(conn, uuid)
            if dom is None:
                return None
            try:
                return self._domain_info(dom)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return self._call(uri, f"looking up domain {uuid}", find)

    def cpu_compatible(self, source_uri: str, dest_uri: str, uuid: str) -> tuple[bool, str]:
        def cpu_xml(conn: libvirt.virConnect) -> tuple[str | None, str, str, str]:
            dom = self._lookup(conn, uuid)
            if dom is None:
                raise DriverError(f"domain {uuid} not found on {source_uri}", code=libvirt.VIR_ERR_NO_DOMAIN)
            root = ET.fromstring(dom.XMLDesc(0))
            cpu = root.find("cpu")
            os_type = root.find("./os/type")
            return (ET.tostring(cpu, encoding="unicode") if cpu is not None and cpu.find("model") is not None
                    else None, os_type.get("arch", "x86_64"), os_type.get("machine", ""), root.get("type", "kvm"))

        xml, arch, machine, virttype = self._call(source_uri, "reading the domain CPU", cpu_xml)
        if xml is None:
            return True, ""  # host-model/passthrough: libvirt checks at migration time

        def compare(conn: libvirt.virConnect) -> int:
            return conn.compareHypervisorCPU(None, arch, None, virttype, xml, 0)

        result = self._call(dest_uri, "comparing CPUs", compare)
        if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
            return False, "libvirt reports the CPU definition incompatible"
        return True, ""

    def destroy_domain(self, uri: str, uuid: str) -> bool:
        def destroy(conn: libvirt.virConnect) -> bool:
            dom = self._lookup(conn, uuid)
            if dom is None:
                return False
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN):
                    raise
            try:
                if dom.isPersistent():
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
            return True

        return self._call(uri, f"destroying domain {uuid}", destroy)

    # -- volumes
    def volume_reachable(self, uri: str, disk: DiskInfo) -> tuple[bool, str]:
        """Network disks: their portals answer (checked from the controller;
        the destination's own login happens before switchover, and a failure
        there leaves the VM on its source). Local files: libvirt checks them."""
        import socket

        if disk.kind != "network":
            return True, ""
        for host, port in disk.hosts:
            try:
                with socket.create_connection((host, port or 3260), timeout=3):
                    pass
            except OSError as exc:
                return False, f"{host}:{port} does not answer ({exc.strerror or exc})"
        return True, ""

    def _secret(self, conn: libvirt.virConnect, usage: str, secret_type: str | None = None):
        types = [secret_type] if secret_type else list(_SECRET_USAGE)
        for kind in types:
            try:
                return conn.secretLookupByUsage(_SECRET_USAGE[kind], usage)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                    raise
        return None

    def secret_defined(self, uri: str, usage: str) -> bool:
        return self._call(uri, f"looking up secret {usage}", lambda c: self._secret(c, usage) is not None)

    def copy_secret(self, source_uri: str, dest_uri: str, usage: str, secret_type: str,
                    fallback_value: bytes | None = None) -> None:
        def read(conn: libvirt.virConnect) -> tuple[str, bytes | None]:
            secret = self._secret(conn, usage, secret_type)
            if secret is None:
                raise DriverError(f"no secret with usage {usage!r} on {source_uri}", code=libvirt.VIR_ERR_NO_SECRET)
            root = ET.fromstring(secret.XMLDesc(0))
            for uuid in root.findall("uuid"):
                root.remove(uuid)  # UUIDs may differ per host; disks refer by usage
            try:
                value = secret.value()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_INVALID_SECRET and "private" not in str(exc):
                    raise
                value = None
            return ET.tostring(root, encoding="unicode"), value

        xml, value = self._call(source_uri, f"reading secret {usage}", read)
        if value is None:
            value = fallback_value
        if value is None:
            raise DriverError(f"secret {usage!r} is private on the source and no credential is registered "
                              f"(livemig credential add {usage})")

        def define(conn: libvirt.virConnect) -> None:
            secret = conn.secretDefineXML(xml, 0)
            try:
                secret.setValue(value, 0)
            except libvirt.libvirtError:
                secret.undefine()
                raise

        self._call(dest_uri, f"defining secret {usage}", define)

    def undefine_secret(self, uri: str, usage: str) -> bool:
        def undefine(conn: libvirt.virConnect) -> bool:
            secret = self._secret(conn, usage)
            if secret is None:
                return False
            secret.undefine()
            return True

        return self._call(uri, f"undefining secret {usage}", undefine)

    # -- disk images (block migration)
    def disk_image(self, uri: str, path: str) -> DiskImage | None:
        return self._call(uri, f"reading image {path}", libvirt_images.read_image, path)

    def create_disk_image(self, uri: str, image: DiskImage) -> None:
        try:
            self._call(uri, f"creating image {image.path}", libvirt_images.create_image, image)
        except libvirt_images.NoSuchDirectory as exc:
            raise DriverError(f"creating image {image.path}: {exc} on the host", code=exc.code) from None

    def delete_disk_image(self, uri: str, path: str) -> bool:
        return self._call(uri, f"removing image {path}", libvirt_images.delete_image, path)

    # -- networks
    def network_present(self, uri: str, interface: InterfaceInfo) -> tuple[bool, str]:
        def present(conn: libvirt.virConnect) -> tuple[bool, str]:
            if interface.network:
                try:
                    net = conn.networkLookupByName(interface.network)
                except libvirt.libvirtError:
                    return False, f"network {interface.network} is not defined"
                return (True, "") if net.isActive() else (False, f"network {interface.network} is not active")
            if interface.bridge:
                try:
                    iface = conn.interfaceLookupByName(interface.bridge)
                    if not iface.isActive():
                        return False, f"bridge {interface.bridge} is down"
                except libvirt.libvirtError:
                    return False, f"bridge {interface.bridge} does not exist"
            return True, ""

        return self._call(uri, "checking networks", present)

    def filter_xml(self, uri: str, name: str) -> str | None:
        def read(conn: libvirt.virConnect) -> str | None:
            try:
                return strip_uuid(conn.nwfilterLookupByName(name).XMLDesc(0))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER:
                    return None
                raise

        return self._call(uri, f"reading filter {name}", read)

    def define_filter(self, uri: str, xml: str) -> None:
        name = ET.fromstring(xml).get("name")
        existing = self.filter_xml(uri, name)
        if existing is not None and existing != strip_uuid(xml):
            raise FilterConflict(f"filter {name} on {uri} has different rules")
        self._call(uri, f"defining filter {name}", lambda c: c.nwfilterDefineXML(xml))

    def undefine_filter(self, uri: str, name: str) -> bool:
        def undefine(conn: libvirt.virConnect) -> bool:
            try:
                conn.nwfilterLookupByName(name).undefine()
                return True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER:
                    return False
                raise

        return self._call(uri, f"undefining filter {name}", undefine)

    # -- migration
    def _collect_stats(self, source_uri: str, uuid: str, interval: float, finished: threading.Event,
                       latest: list, control: ConvergenceControl) -> None:
        """In its own thread: a jobStats call can block for a while around
        switchover, and the migration's caller must not wait for it.
        latest[0] is the last progress, latest[1] a foreign pause seen."""
        watch = _PauseWatch(control)
        try:
            dom = self._lookup(self.conn(source_uri), uuid)
            while dom is not None and not finished.is_set():
                try:
                    stats = _migration_job_stats(dom)
                    latest[0] = _progress(stats) if stats is not None else latest[0]
                    latest[1] = watch.foreign_pause(dom) if stats is not None else None
                except libvirt.libvirtError:
                    return  # switchover happened: the domain left this host
                finished.wait(interval)
        except (HostUnreachable, libvirt.libvirtError):
            return

    def _monitor(self, source_uri: str, uuid: str, options: MigrationOptions, on_progress: ProgressCallback | None,
                 should_abort: AbortCheck | None, finished: threading.Event, started: float,
                 control: ConvergenceControl) -> str | None:
        """Report progress and take the convergence steps (downtime schedule,
        post-copy, pause to complete, abort, timeout, stall: see
        livemig.drivers.convergence) until `finished`; returns why we aborted
        the job ("abort", "timeout", "stall" or a foreign pause's reason), or
        None. The schedule and timeout run on the job's own clock when
        libvirt reports it."""
        latest: list[Any] = [None, None]
        threading.Thread(target=self._collect_stats, args=(source_uri, uuid, options.poll_interval_s, finished,
                                                           latest, control), name=f"migration-stats-{uuid[:8]}",
                         daemon=True).start()
        while not finished.wait(options.poll_interval_s):
            progress = latest[0]
            if progress is not None:
                progress.phase = control.phase
                if on_progress is not None:
                    on_progress(progress)
            elapsed_s = max(time.monotonic() - started, (progress.elapsed_ms / 1000.0) if progress else 0.0)
            self._converge(source_uri, uuid, options, control, progress, elapsed_s, should_abort, latest[1])
            if control.aborting is not None:
                # Again at every poll: an abort asked before the job really
                # started (its first ~0.3 s) does not take.
                options.may_change_job()
                try:
                    self.abort_migration(source_uri, uuid)
                except LivemigError:
                    pass  # no job any more (it just finished) or already aborting
        return control.aborting

    def _converge(self, source_uri: str, uuid: str, options: MigrationOptions, control: ConvergenceControl,
                  progress: MigrationProgress | None, elapsed_s: float, should_abort: AbortCheck | None,
                  foreign_pause: str | None) -> None:
        """One poll's convergence steps, each fenced (options.may_change_job
        raises Fenced if another controller owns the migration now: this
        monitor stops, the job is left to run, followed by its new owner)."""
        if control.aborting is not None:
            return
        if foreign_pause is not None and not control.switched:
            options.may_change_job()
            control.aborting = foreign_pause
            return
        control.take_steps(progress, elapsed_s, abort_requested=should_abort is not None and should_abort(),
                           apply=lambda step: self._apply_step(source_uri, uuid, step))

    def _apply_step(self, source_uri: str, uuid: str, step: Step) -> bool:
        """Whether the hypervisor took the step (a switch asked before the
        job really started is refused, and asked again at the next poll)."""
        if step.action == SET_DOWNTIME:
            self._raise_downtime(source_uri, uuid, step.downtime_ms)
            return True
        if step.action in (START_POST_COPY, SUSPEND):
            def change(conn: libvirt.virConnect) -> bool:
                dom = self._lookup(conn, uuid)
                if dom is None:
                    return False
                if step.action == START_POST_COPY:
                    dom.migrateStartPostCopy(0)
                else:
                    # The guest stops dirtying memory: the copy ends, and
                    # libvirt resumes it on the destination.
                    dom.suspend()
                return True

            try:
                return self._call(source_uri, f"convergence step {step.action}", change)
            except LivemigError:
                return False
        return True  # abort: the monitor aborts at every poll from now on

    def _raise_downtime(self, source_uri: str, uuid: str, downtime_ms: int) -> None:
        def raise_(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, uuid)
            if dom is not None:
                dom.migrateSetMaxDowntime(downtime_ms, 0)

        try:
            self._call(source_uri, "raising the maximum downtime", raise_)
        except LivemigError:
            pass  # the job just ended (or the domain left): nothing to raise

    @staticmethod
    def _aborted_error(reason: str | None, options: MigrationOptions, message: str, code: int | None) -> DriverError:
        if reason == "timeout":
            return MigrationTimedOut(f"migration did not complete within {options.timeout_s:.0f} s; aborted")
        if reason == "stall":
            return MigrationTimedOut(f"migration made no progress for {options.stall_s:g} s (it does not "
                                     f"converge); aborted")
        if reason not in (None, "abort"):
            return SourcePaused(f"the VM was {reason} on its source during the migration; the migration was "
                                f"aborted", code=code)
        return MigrationAborted(f"migration aborted: {message}", code=code)

    def migrate(self, source_uri: str, dest_uri: str, uuid: str, options: MigrationOptions,
                on_progress: ProgressCallback | None = None,
                should_abort: AbortCheck | None = None) -> MigrationResult:
        flags, params = migration_call(options, options.destination)
        # The shared connection: libvirt multiplexes calls on it, so the long
        # migration call does not block other threads' calls.
        conn = self.conn(source_uri)
        started = time.monotonic()
        finished = threading.Event()
        outcome: dict[str, Any] = {}
        dom = self._lookup(conn, uuid)
        if dom is None:
            raise DriverError(f"domain {uuid} not found on {source_uri}", code=libvirt.VIR_ERR_NO_DOMAIN)
        try:
            dom.migrateSetMaxDowntime(options.initial_downtime_ms(), 0)
        except libvirt.libvirtError as exc:
            raise _error(exc, "setting the maximum downtime") from None
        control = ConvergenceControl(options)
        completed = _CompletedJobEvent(conn, dom)

        def call() -> None:
            try:
                dom.migrateToURI3(dest_uri, params, flags)
            except libvirt.libvirtError as exc:
                outcome["error"] = exc
            except Exception as exc:  # noqa: BLE001 - reported as the migration's reason, not lost in the thread
                outcome["unexpected"] = exc
            finally:
                finished.set()

        # The libvirt call blocks for the whole job in a worker thread; this
        # (the task's) thread monitors, because TaskFlow's progress updates
        # must come from the thread that runs the task.
        try:
            worker = threading.Thread(target=call, name=f"migration-{uuid[:8]}", daemon=True)
            worker.start()
            outcome["reason"] = self._monitor(source_uri, uuid, options, on_progress, should_abort, finished,
                                              started, control)
            worker.join()
            error = outcome.get("error")
            reason = outcome.get("reason")
            unexpected = outcome.get("unexpected")
            if (error is not None or unexpected is not None) and control.paused_by_us:
                self._resume_paused_source(source_uri, uuid)
            if unexpected is not None:
                raise DriverError(f"the hypervisor migration call raised {type(unexpected).__name__}: {unexpected}")
            if error is not None and control.switched:
                # After the switch the VM lives on the destination: follow the
                # stream to its end (or resume it) rather than roll back.
                self._follow_post_copy(source_uri, dest_uri, uuid, options, params, flags, error)
                event = completed.wait(2.0)
                result = _result_of(event) if event else MigrationResult(downtime_ms=None, elapsed_ms=0)
            elif error is not None:
                if reason is not None or error.get_error_code() == libvirt.VIR_ERR_OPERATION_ABORTED:
                    raise self._aborted_error(reason, options, error.get_error_message(), error.get_error_code())
                raise _error(error, "live migration failed")
            else:
                # After post-copy only the source's event has the figures.
                event = completed.wait(2.0 if control.switched else 0.5)
                result = _result_of(event) if event else self._completed(dest_uri, uuid)
            elapsed_ms = int((time.monotonic() - started) * 1000)
        finally:
            completed.close()
        if result is None:
            return MigrationResult(downtime_ms=None, elapsed_ms=elapsed_ms, phase=control.phase)
        result.elapsed_ms = elapsed_ms
        result.phase = control.phase
        if result.final is not None:
            result.final.phase = control.phase
        return result

    def _follow_post_copy(self, source_uri: str, dest_uri: str, uuid: str, options: MigrationOptions,
                          params: dict[str, Any], flags: int, error: libvirt.libvirtError) -> None:
        """The migration call failed after the switch to post-copy. Measured
        here (NOTES): a destination libvirtd that died leaves the QEMU stream
        going on to its end, the source shut off but still defined (libvirt
        did not undefine it): wait for that and tidy the definition up. A
        paused post-copy (the link broke: the source is paused with reason
        postcopy-failed) is resumed with POSTCOPY_RESUME. A job that neither
        ends nor resumes within the timeout (the destination QEMU is gone)
        lost the VM: raise, and the flow's outcome applies the unrecoverable
        policy."""
        why = error.get_error_message()
        options.record_step("note", f"the migration call failed after the switch to post-copy ({why}); following "
                                    f"the stream on {source_uri}")
        limit_s = max(options.timeout_s, 60.0)
        deadline = time.monotonic() + limit_s
        next_resume = 0.0
        refused = ""
        while time.monotonic() < deadline:
            state = self._source_state_after_switch(source_uri, uuid)
            if state in ("gone", "shutoff"):
                if state == "shutoff":
                    self._undefine_left_source(source_uri, uuid, options)
                return
            if state == "failed" and time.monotonic() >= next_resume:
                # libvirt also says "post-copy failed" when it only lost its
                # peer daemon while the QEMU stream goes on: then the resume
                # is refused ("migration is still running") and we wait.
                next_resume = time.monotonic() + POST_COPY_RESUME_INTERVAL_S
                options.may_change_job()
                try:
                    self.conn(source_uri).lookupByUUIDString(uuid).migrateToURI3(
                        dest_uri, params, flags | libvirt.VIR_MIGRATE_POSTCOPY_RESUME)
                    options.record_step("note", "resumed the paused post-copy migration (POSTCOPY_RESUME)")
                except libvirt.libvirtError as exc:
                    if exc.get_error_message() != refused:
                        refused = exc.get_error_message()
                        options.record_step("note", f"post-copy resume refused ({refused}); following the stream")
                continue
            time.sleep(options.poll_interval_s)
        raise DriverError(f"post-copy did not end within {limit_s:.0f} s after the migration call failed ({why}); "
                          f"the destination lost the VM" + (f" (resume refused: {refused})" if refused else ""))

    def _source_state_after_switch(self, source_uri: str, uuid: str) -> str:
        """"copying" (paused, post-copy), "failed" (paused, post-copy
        failed), "shutoff" (the stream ended, the definition left), "gone"
        (undefined), or "unknown" (the host does not answer: asked again)."""
        try:
            dom = self._lookup(self.conn(source_uri), uuid)
            if dom is None:
                return "gone"
            state, reason = dom.state()
        except (libvirt.libvirtError, HostUnreachable):
            return "unknown"
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            return "shutoff"
        if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED:
            return "failed"
        return "copying"

    def _undefine_left_source(self, source_uri: str, uuid: str, options: MigrationOptions) -> None:
        """The definition libvirt left on the source when it could not finish
        the job: the VM lives on the destination now."""
        options.may_change_job()

        def undefine(conn: libvirt.virConnect) -> bool:
            dom = self._lookup(conn, uuid)
            if dom is None or dom.isActive():
                return False
            dom.undefine()
            return True

        if self._call(source_uri, "removing the source's definition left after post-copy", undefine):
            options.record_step("note", "post-copy completed; removed the shut-off definition libvirt left on the "
                                        "source")

    def _resume_paused_source(self, source_uri: str, uuid: str) -> None:
        """We paused the guest for the copy to complete, and it did not: the
        guest runs on where it is."""
        def resume(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, uuid)
            if dom is not None and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()

        try:
            self._call(source_uri, "resuming the guest paused for the migration", resume)
        except LivemigError:
            pass  # gone or unreachable: the flow's revert finds where it is

    def _completed(self, dest_uri: str, uuid: str) -> MigrationResult | None:
        """The completed job's figures, from the destination."""
        try:
            dom = self._lookup(self.conn(dest_uri), uuid)
            if dom is None:
                return None
            # KEEP: reading completed stats otherwise clears them for everyone else.
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
        except (libvirt.libvirtError, HostUnreachable):
            return None
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        return _result_of(stats)

    def wait_for_migration_job(self, source_uri: str, uuid: str, options: MigrationOptions,
                               on_progress: ProgressCallback | None = None,
                               should_abort: AbortCheck | None = None,
                               dest_uri: str | None = None) -> MigrationResult | None:
        conn = self._open(source_uri)
        control = ConvergenceControl(options)
        try:
            dom = self._lookup(conn, uuid)
            watch = _PauseWatch(control)
            while dom is not None:
                try:
                    stats = _migration_job_stats(dom)
                    if dom.state() == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY):
                        control.phase = POST_COPY  # switched before this controller took over
                    pause = watch.foreign_pause(dom)
                except libvirt.libvirtError:
                    break  # the domain left the host: the job ended
                if stats is None:
                    break
                progress = _progress(stats)
                progress.phase = control.phase
                if on_progress is not None:
                    on_progress(progress)
                self._converge(source_uri, uuid, options, control, progress, progress.elapsed_ms / 1000.0,
                               should_abort, pause)
                if control.aborting is not None:
                    options.may_change_job()
                    self.abort_migration(source_uri, uuid)
                    if control.paused_by_us:
                        self._resume_paused_source(source_uri, uuid)
                    raise self._aborted_error(control.aborting, options, "aborted by request", None)
                time.sleep(options.poll_interval_s)
        finally:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
        result = self._completed(dest_uri, uuid) if dest_uri else None
        if result is not None:
            result.phase = control.phase
        return result

    def abort_migration(self, source_uri: str, uuid: str) -> bool:
        def abort(conn: libvirt.virConnect) -> bool:
            dom = self._lookup(conn, uuid)
            if dom is None or _migration_job_stats(dom) is None:
                return False  # no job, or a job that is not a migration (backup, dump)
            try:
                dom.abortJob()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return False
                raise
            return True

        return self._call(source_uri, f"aborting the migration of {uuid}", abort)
