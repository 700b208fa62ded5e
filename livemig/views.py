"""Plain result objects returned by the library API (and printed by the CLI)."""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from livemig.persistence.models import Event, Host, Instance, Migration


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


@dataclasses.dataclass(frozen=True)
class View:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class HostView(View):
    name: str
    uri: str
    zone: str
    enabled: bool
    disabled_reason: str | None
    vcpus: int
    memory_mb: int
    disk_gb: int
    max_concurrent_migrations: int
    last_seen: str | None
    shared_paths: list[str] = dataclasses.field(default_factory=list)
    # In maintenance: no new placements (a drain puts it there).
    maintenance: bool = False
    maintenance_reason: str | None = None
    maintenance_since: str | None = None
    # In standby: emptied by a consolidation, no placements until `host wake`.
    standby: bool = False
    standby_reason: str | None = None
    standby_since: str | None = None
    # Where migrations to this host send their stream (None: its URI's address).
    migration_address: str | None = None
    migration_tls_name: str | None = None

    @classmethod
    def of(cls, h: Host) -> "HostView":
        return cls(h.name, h.uri, h.zone, h.enabled, h.disabled_reason, h.vcpus, h.memory_mb, h.disk_gb,
                   h.max_concurrent_migrations, _iso(h.last_seen), list(h.shared_paths or []),
                   bool(h.maintenance), h.maintenance_reason, _iso(h.maintenance_since), bool(h.standby),
                   h.standby_reason, _iso(h.standby_since), h.migration_address, h.migration_tls_name)


@dataclasses.dataclass(frozen=True)
class InstanceView(View):
    uuid: str
    name: str
    project: str
    host: str | None
    state: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    volumes: list[Any]
    interfaces: list[Any]
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, i: Instance) -> "InstanceView":
        return cls(i.uuid, i.name, i.project, i.host, i.state, i.vcpus, i.memory_mb, i.disk_gb,
                   list(i.volumes or []), list(i.interfaces or []), dict(i.labels or {}))


@dataclasses.dataclass(frozen=True)
class EventView(View):
    at: str | None
    kind: str
    name: str
    state: str
    message: str
    controller: str

    @classmethod
    def of(cls, e: Event) -> "EventView":
        return cls(_iso(e.at), e.kind, e.name, e.state, e.message, e.controller)


@dataclasses.dataclass(frozen=True)
class MigrationView(View):
    id: int
    instance_uuid: str
    instance_name: str
    source_host: str
    dest_host: str
    status: str
    progress: float
    memory_total: int
    memory_processed: int
    memory_remaining: int
    memory_bps: int
    iteration: int
    expected_downtime_ms: int | None
    downtime_ms: int | None
    error_reason: str | None
    requested_by: str
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    events: list[EventView] = dataclasses.field(default_factory=list)
    # Whether livemig chose the destination, and each destination tried
    # ({"attempt", "host", "outcome", "reason", ...}, the current one last).
    scheduled: bool = False
    attempts: list[dict] = dataclasses.field(default_factory=list)
    # The policy it runs under and the options chosen (policy and flags; any
    # other option has its default, livemig.policies.options).
    policy: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Where the job is (pre-copy iteration N, post-copy, paused to complete).
    phase: str = ""
    throttle_pct: int | None = None
    postcopy_requests: int | None = None
    force_complete_requested: bool = False

    @property
    def phase_summary(self) -> str:
        """The phase as an operator reads it: "pre-copy pass 3, throttle 40 %",
        "post-copy, 812 page requests", "paused to complete"; empty before
        the job reports."""
        if not self.phase:
            return ""
        if self.phase == "pre-copy":
            text = f"pre-copy pass {self.iteration}" if self.iteration else "pre-copy"
        elif self.phase == "post-copy" and self.postcopy_requests is not None:
            text = f"post-copy, {self.postcopy_requests} page requests"
        else:
            text = self.phase
        if self.throttle_pct is not None and self.phase != "post-copy":
            text += f", throttle {self.throttle_pct} %"
        return text

    @classmethod
    def of(cls, m: Migration, events: list[Event] | None = None) -> "MigrationView":
        duration = (m.finished_at - m.created_at).total_seconds() if m.finished_at and m.created_at else None
        return cls(m.id, m.instance_uuid, m.instance_name, m.source_host, m.dest_host, m.status, m.progress,
                   m.memory_total, m.memory_processed, m.memory_remaining, m.memory_bps, m.iteration,
                   m.expected_downtime_ms, m.downtime_ms, m.error_reason, m.requested_by, _iso(m.created_at),
                   _iso(m.started_at), _iso(m.finished_at), duration,
                   [EventView.of(e) for e in events or []], bool(m.scheduled), [dict(a) for a in m.attempts or []],
                   m.policy, dict(m.options or {}), m.phase or "", m.throttle_pct, m.postcopy_requests,
                   bool(m.force_complete_requested))


@dataclasses.dataclass(frozen=True)
class ResourceLine(View):
    kind: str  # "TOTAL", "USED" or "NODE"
    host: str
    project: str
    # Allocated (TOTAL: the host's size).
    vcpus: int
    memory_mb: int
    disk_gb: int
    # Measured over the window (livemig.load), None where nothing was
    # sampled: CPU in cores, memory in use in MiB. USED: the host's own
    # samples (its guests and itself); NODE: the sums of its instances'
    # means and of their peaks (the peak of the sum is at most that).
    cpu_mean: float | None = None
    cpu_peak: float | None = None
    memory_mean_mb: float | None = None
    memory_peak_mb: float | None = None
    samples: int = 0


@dataclasses.dataclass(frozen=True)
class PolicyView(View):
    name: str
    source: str  # "built-in" or the settings file that defines it
    description: str
    # The options it sets, and all of its options (None: the runner's setting).
    options: dict[str, Any]
    effective: dict[str, Any]
    # The rules that choose it ({"name", "criteria"}) and the instances they
    # choose it for now (`default`: those no rule matches).
    rules: list[dict[str, str]]
    instances: list[str]
