"""The hypervisor driver interface the tasks use, and the values it returns.

Every method names its host by driver URI. Values are plain dataclasses so
that tasks can put them (via `asdict`) into TaskFlow's store. A driver never
returns or logs a secret's value."""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

from livemig.errors import LivemigError
from livemig.states import DomainState


class DriverError(LivemigError):
    """A hypervisor call failed; `code` is the hypervisor's error code if any."""

    exit_code = 1

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class MigrationAborted(DriverError):
    """The migration job was cancelled; the domain stays on its source."""


class MigrationTimedOut(DriverError):
    """The migration did not finish in time and was aborted."""


class SourcePaused(DriverError):
    """Something other than the migration paused the VM on its source (an
    operator's suspend, an I/O error, a watchdog): the migration was aborted
    rather than finished, so the VM stays paused where it was."""


class FilterConflict(DriverError):
    """A filter with the same name but different rules exists on the host."""


@dataclasses.dataclass
class DiskInfo:
    target: str
    kind: str  # "file", "block" or "network"
    source: str  # a path, or "protocol://host:port/name" for network disks
    protocol: str | None = None
    hosts: list[list[Any]] = dataclasses.field(default_factory=list)  # [[host, port], ...]
    secret_usage: str | None = None
    secret_type: str | None = None
    size_gb: float = 0.0


@dataclasses.dataclass
class DiskImage:
    """A disk image file on a host, as a block migration needs to know it."""

    path: str
    format: str  # "qcow2", "raw", ...
    virtual_size: int  # bytes the guest sees
    # The image this one is an overlay on, if any (qcow2 backing file).
    backing: str | None = None
    backing_format: str | None = None


@dataclasses.dataclass
class InterfaceInfo:
    mac: str
    bridge: str | None = None
    network: str | None = None
    vlan: int | None = None
    filter: str | None = None
    ip: str | None = None


@dataclasses.dataclass
class DomainInfo:
    uuid: str
    name: str
    state: DomainState
    vcpus: int
    memory_mb: int
    disk_gb: int = 0
    project: str = "default"
    cpu_model: str | None = None
    # The anti-affinity group label of the domain's livemig metadata.
    group: str | None = None
    # The labels of the livemig metadata (migration policy rules match them).
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    disks: list[DiskInfo] = dataclasses.field(default_factory=list)
    interfaces: list[InterfaceInfo] = dataclasses.field(default_factory=list)
    # A migration job (outgoing or incoming) runs; other jobs (backup, dump)
    # do not count: they are not ours to follow or abort.
    migration_job_active: bool = False
    # The paused, not yet started copy a migration creates on its destination.
    incoming: bool = False

    @property
    def running(self) -> bool:
        return self.state is DomainState.RUNNING


@dataclasses.dataclass
class HostFacts:
    hostname: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    cpu_model: str | None
    arch: str
    hypervisor_version: int
    libvirt_version: int = 0
    # The bridges and libvirt networks the host offers guests.
    networks: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class HostStats:
    """A host's cumulative CPU counter and its memory in use, at one instant.
    Utilisation is the difference of two readings over their time apart."""

    # Seconds since the epoch on the driver's clock, when read.
    timestamp: float
    cpus: int
    # Busy time (everything but idle and iowait) of all CPUs, in ns, since boot.
    cpu_busy_ns: int
    memory_total_mb: float
    # In use by processes (total less free, buffers and page cache).
    memory_used_mb: float


@dataclasses.dataclass
class DomainStats:
    """A running domain's cumulative CPU time and its memory in use."""

    uuid: str
    name: str
    timestamp: float
    # CPU time of the whole QEMU process (vCPUs and emulator), in ns, since it started.
    cpu_time_ns: int
    # What the guest reports in use (available less unused) when it reports,
    # else the QEMU process's resident size, else its balloon size.
    memory_used_mb: float
    vcpus: int


@dataclasses.dataclass
class MigrationProgress:
    fraction: float
    memory_total: int = 0
    memory_processed: int = 0
    memory_remaining: int = 0
    memory_bps: int = 0
    iteration: int = 0
    expected_downtime_ms: int | None = None
    elapsed_ms: int = 0
    # Where the job is: "pre-copy", "post-copy" or "paused to complete"
    # ("" when the driver does not say).
    phase: str = ""
    # The CPU throttle auto-converge puts on the guest (%), once it throttles.
    throttle_pct: int | None = None
    # The pages the destination asked for after the switch to post-copy.
    postcopy_requests: int | None = None


@dataclasses.dataclass
class MigrationDestination:
    """What a migration's stream needs to know about its destination host."""

    # The address of the destination's migration network, "" for the
    # hypervisor's default (the host name of the destination's URI).
    migration_address: str = ""
    # 0: the hypervisor picks a port from its range.
    migration_port: int = 0
    # The name the destination's TLS certificate carries, when it is not
    # the address the stream connects to.
    tls_hostname: str = ""
    # The targets (vda, ...) of the disks whose storage is copied.
    copy_disks: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class MigrationOptions:
    max_downtime_ms: int = 300
    bandwidth_mib_s: int = 0
    # Every file or block disk is on storage both hosts share (decided per
    # disk, livemig.disk_sharing): libvirt's UNSAFE flag.
    shared_storage: bool = False
    timeout_s: float = 600.0
    poll_interval_s: float = 0.2
    # (seconds into the job, allowed downtime in ms), ascending; empty: the
    # maximum from the start.
    downtime_schedule: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    # The migration's policy options (livemig.policies.options, same names).
    postcopy_bandwidth_mib_s: int = 0
    auto_converge: bool = False
    auto_converge_initial: int = 20
    auto_converge_increment: int = 10
    # "off", "after-first-pass", "after-seconds" (post_copy_after_s into the
    # job) or "on-stall"; anything but "off" starts the job able to switch.
    post_copy: str = "off"
    post_copy_after_s: float = 30.0
    # What the completion timeout does: "abort", or "force-complete"
    # (post-copy if allowed, else pause the guest so that the copy ends).
    timeout_action: str = "abort"
    # No new low in memory_remaining for this long: the job does not converge.
    stall_s: float = 30.0
    # The phase a job followed after a controller restart was last recorded
    # in (a job we paused to complete is still ours to wait for).
    phase: str = "pre-copy"
    tls: bool = False
    parallel_connections: int = 0
    compression: str = ""
    copy_storage: str = "off"
    destination: MigrationDestination = dataclasses.field(default_factory=MigrationDestination)
    # Called immediately before the driver changes a running job (raises its
    # allowed downtime, aborts it); raises (livemig.fencing.Fenced) when the
    # caller may no longer act on the job because another controller has
    # claimed the migration since. The driver then stops following the job
    # and leaves it alone: its new owner follows it.
    before_job_change: Callable[[], None] | None = dataclasses.field(default=None, repr=False, compare=False)
    # Asked between polls: whether an operator asked to force the job to
    # complete (`migration force-complete`, recorded in the database).
    force_complete_check: Callable[[], bool] | None = dataclasses.field(default=None, repr=False, compare=False)
    # Told each convergence step the driver took (livemig.drivers.convergence
    # actions: "downtime", "post-copy", "suspend", "abort", or "note"), with
    # the trail's message, after the hypervisor took it.
    on_step: Callable[[str, str], None] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def post_copy_allowed(self) -> bool:
        return self.post_copy != "off"

    def may_change_job(self) -> None:
        if self.before_job_change is not None:
            self.before_job_change()

    def force_requested(self) -> bool:
        return self.force_complete_check is not None and self.force_complete_check()

    def record_step(self, action: str, message: str) -> None:
        if self.on_step is not None:
            self.on_step(action, message)

    def initial_downtime_ms(self) -> int:
        return self.downtime_schedule[0][1] if self.downtime_schedule else int(self.max_downtime_ms)

    def downtime_at(self, job_elapsed_s: float) -> int:
        """The allowed downtime this far into the job: measured from the job's
        own start, so that a job followed after a controller restart keeps
        its schedule."""
        allowed = self.initial_downtime_ms()
        for at, downtime_ms in self.downtime_schedule:
            if job_elapsed_s >= at:
                allowed = downtime_ms
        return int(allowed)


def downtime_schedule(max_downtime_ms: int, steps: int, step_delay_s: float) -> list[tuple[float, int]]:
    """The allowed downtime rises from max/steps to max, one step every
    `step_delay_s`. QEMU switches over as soon as what is left to copy fits
    in the allowed downtime at the bandwidth it last measured; allowing the
    maximum from the start lets a migration whose first bandwidth sample is
    low (a busy host) stop the guest with most of its memory still unsent."""
    if steps <= 1:
        return [(0.0, int(max_downtime_ms))]
    base = max_downtime_ms / steps
    offset = (max_downtime_ms - base) / steps
    return [(step_delay_s * i, int(round(base + offset * i))) for i in range(steps + 1)]


@dataclasses.dataclass
class MigrationResult:
    downtime_ms: int | None
    elapsed_ms: int
    # The hypervisor's figures for the completed job (memory_remaining 0, the
    # last iteration), when it reports them.
    final: MigrationProgress | None = None
    # How the job ended: "pre-copy", "post-copy" (switched) or "paused to
    # complete" (livemig.drivers.convergence phases).
    phase: str = "pre-copy"


ProgressCallback = Callable[[MigrationProgress], None]
# Asked between polls; returning True aborts the migration job.
AbortCheck = Callable[[], bool]


class Driver(abc.ABC):
    """What livemig needs from a hypervisor."""

    # -- hosts and domains
    @abc.abstractmethod
    def host_facts(self, uri: str) -> HostFacts:
        """Totals and versions of the host; raises HostUnreachable."""

    @abc.abstractmethod
    def list_domains(self, uri: str) -> list[DomainInfo]: ...

    @abc.abstractmethod
    def find_domain(self, uri: str, uuid: str) -> DomainInfo | None:
        """The domain with this uuid on the host, or None."""

    # -- load
    @abc.abstractmethod
    def host_stats(self, uri: str) -> HostStats:
        """The host's CPU counter and memory in use; raises HostUnreachable."""

    @abc.abstractmethod
    def domain_stats(self, uri: str) -> list[DomainStats]:
        """Every running domain's CPU counter and memory in use."""

    @abc.abstractmethod
    def cpu_compatible(self, source_uri: str, dest_uri: str, uuid: str) -> tuple[bool, str]:
        """Whether the destination can run the domain's CPU, and why not."""

    @abc.abstractmethod
    def destroy_domain(self, uri: str, uuid: str) -> bool:
        """Stop and undefine the domain; False if it was not there."""

    # -- volumes
    @abc.abstractmethod
    def volume_reachable(self, uri: str, disk: DiskInfo) -> tuple[bool, str]: ...

    @abc.abstractmethod
    def secret_defined(self, uri: str, usage: str) -> bool: ...

    @abc.abstractmethod
    def copy_secret(self, source_uri: str, dest_uri: str, usage: str, secret_type: str,
                    fallback_value: bytes | None = None) -> None:
        """Define on dest the secret with this usage id and the source's value."""

    @abc.abstractmethod
    def undefine_secret(self, uri: str, usage: str) -> bool: ...

    # -- disk images (block migration)
    @abc.abstractmethod
    def disk_image(self, uri: str, path: str) -> DiskImage | None:
        """The image file at `path` on the host, or None if there is none."""

    @abc.abstractmethod
    def create_disk_image(self, uri: str, image: DiskImage) -> None:
        """Create an empty, sparse image of that format and virtual size (an
        overlay on `image.backing` if given); raises DriverError if a file
        is there already."""

    @abc.abstractmethod
    def delete_disk_image(self, uri: str, path: str) -> bool:
        """Remove the image file; False if there was none."""

    # -- networks
    @abc.abstractmethod
    def network_present(self, uri: str, interface: InterfaceInfo) -> tuple[bool, str]:
        """Whether the bridge or libvirt network the interface uses exists."""

    @abc.abstractmethod
    def filter_xml(self, uri: str, name: str) -> str | None: ...

    @abc.abstractmethod
    def define_filter(self, uri: str, xml: str) -> None: ...

    @abc.abstractmethod
    def undefine_filter(self, uri: str, name: str) -> bool: ...

    # -- migration
    @abc.abstractmethod
    def migrate(self, source_uri: str, dest_uri: str, uuid: str, options: MigrationOptions,
                on_progress: ProgressCallback | None = None,
                should_abort: AbortCheck | None = None) -> MigrationResult:
        """Live-migrate and block until the job ends; raises MigrationAborted,
        MigrationTimedOut or DriverError, in which case the domain is normally
        still running on the source."""

    @abc.abstractmethod
    def wait_for_migration_job(self, source_uri: str, uuid: str, options: MigrationOptions,
                               on_progress: ProgressCallback | None = None,
                               should_abort: AbortCheck | None = None,
                               dest_uri: str | None = None) -> MigrationResult | None:
        """Block while a migration job of this domain (started by an earlier
        controller) runs on the source, applying the options as `migrate`
        does, with the downtime schedule and the timeout measured from the
        job's start. Returns the completed job's figures (read on `dest_uri`)
        if the job ended there, else None."""

    @abc.abstractmethod
    def abort_migration(self, source_uri: str, uuid: str) -> bool:
        """Cancel the running migration job; False if none was running (another
        kind of job, a backup or a dump, is left alone)."""

    def close(self) -> None:
        """Close the connections the driver keeps; later calls reopen them."""


def driver_dict(value: Any) -> Any:
    """A driver value as JSON-able data for TaskFlow's store."""
    data = dataclasses.asdict(value)
    if "state" in data and isinstance(data["state"], DomainState):
        data["state"] = data["state"].value
    return data
