"""The inventory: hosts, instances, migrations, their events, and local host
reservations. The TaskFlow logbook tables live beside these in one database."""
from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: sa.JSON, list[Any]: sa.JSON}


class Host(Base):
    __tablename__ = "livemig_hosts"

    name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    uri: Mapped[str] = mapped_column(sa.String(1024))
    zone: Mapped[str] = mapped_column(sa.String(255), default="default")
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(sa.String(1024), default=None)
    last_seen: Mapped[dt.datetime | None] = mapped_column(default=None)
    cpu_allocation_ratio: Mapped[float] = mapped_column(default=4.0)
    ram_allocation_ratio: Mapped[float] = mapped_column(default=1.0)
    disk_allocation_ratio: Mapped[float] = mapped_column(default=1.0)
    max_concurrent_migrations: Mapped[int] = mapped_column(default=1)
    # Maintenance: no new placements on the host (a drain puts it there;
    # `host undrain` takes it out). The reason is shown in `host list`.
    maintenance: Mapped[bool] = mapped_column(default=False)
    maintenance_reason: Mapped[str | None] = mapped_column(sa.String(1024), default=None)
    maintenance_since: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Standby: emptied by a consolidation, ready to be powered off; no
    # placements until `host wake`. The reason is shown in `host list`.
    standby: Mapped[bool] = mapped_column(default=False)
    standby_reason: Mapped[str | None] = mapped_column(sa.String(1024), default=None)
    standby_since: Mapped[dt.datetime | None] = mapped_column(default=None)
    # The bridges (names) the host offers guests, as last discovered by
    # `host sync`: the scheduler places an instance only where its networks are.
    networks: Mapped[list[Any]] = mapped_column(default=list)
    # Paths (directories or block devices) this host shares with the others:
    # a file or block disk under one of them, on both hosts, may migrate
    # without copying its storage (see prechecks).
    shared_paths: Mapped[list[Any]] = mapped_column(default=list)
    # The address of the host's migration network: the stream of a migration
    # to this host goes there (None: the address of its URI).
    migration_address: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    # The name the host's migration TLS certificate carries, when it is not
    # the migration address (None: the certificate names the address).
    migration_tls_name: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    # Totals as last discovered by `host sync`.
    vcpus: Mapped[int] = mapped_column(default=0)
    memory_mb: Mapped[int] = mapped_column(default=0)
    disk_gb: Mapped[int] = mapped_column(default=0)
    cpu_model: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    hypervisor_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Instance(Base):
    __tablename__ = "livemig_instances"

    uuid: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), index=True)
    project: Mapped[str] = mapped_column(sa.String(255), default="default")
    host: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    state: Mapped[str] = mapped_column(sa.String(32))
    vcpus: Mapped[int] = mapped_column(default=1)
    memory_mb: Mapped[int] = mapped_column(default=0)
    disk_gb: Mapped[int] = mapped_column(default=0)
    cpu_model: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    volumes: Mapped[list[Any]] = mapped_column(default=list)
    interfaces: Mapped[list[Any]] = mapped_column(default=list)
    # Anti-affinity: instances sharing a group label (from the domain's
    # livemig metadata) are never placed on one host.
    group: Mapped[str | None] = mapped_column(sa.String(255), default=None, index=True)
    # The labels of the domain's livemig metadata: migration policy rules match them.
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Migration(Base):
    __tablename__ = "livemig_migrations"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(sa.String(36), index=True)
    instance_name: Mapped[str] = mapped_column(sa.String(255))
    source_host: Mapped[str] = mapped_column(sa.String(255))
    dest_host: Mapped[str] = mapped_column(sa.String(255))
    status: Mapped[str] = mapped_column(sa.String(32), index=True)
    requested_by: Mapped[str] = mapped_column(sa.String(255), default="")
    # Progress figures of the hypervisor's migration job.
    progress: Mapped[float] = mapped_column(default=0.0)
    memory_total: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    memory_processed: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    memory_remaining: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    memory_bps: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    iteration: Mapped[int] = mapped_column(default=0)
    expected_downtime_ms: Mapped[int | None] = mapped_column(default=None)
    downtime_ms: Mapped[int | None] = mapped_column(default=None)
    error_reason: Mapped[str | None] = mapped_column(sa.Text, default=None)
    logbook_id: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    flow_id: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    job_id: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    abort_requested: Mapped[bool] = mapped_column(default=False)
    # The fencing token: raised by every claim of the migration (a conductor,
    # `migration resume`); a write made under an older epoch changes nothing.
    claim_epoch: Mapped[int] = mapped_column(default=0)
    # Per-migration options (JSON-able), chosen when it was requested; every
    # other setting is the running controller's own.
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The migration policy those options came from (livemig.policies).
    policy: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    # `migration force-complete`: the runner (whichever conductor) switches
    # to post-copy if the policy allows it, else pauses the guest.
    force_complete_requested: Mapped[bool] = mapped_column(default=False)
    # Where the hypervisor job is: "pre-copy", "post-copy", "paused to
    # complete"; the CPU throttle of auto-converge (%) and the pages the
    # destination asked for in post-copy.
    phase: Mapped[str] = mapped_column(sa.String(64), default="")
    throttle_pct: Mapped[int | None] = mapped_column(default=None)
    postcopy_requests: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    # The fleet operation this migration is a move of, if any.
    operation_id: Mapped[int | None] = mapped_column(default=None, index=True)
    # Whether the destination was chosen by livemig's scheduler (then a
    # failure before switchover retries on the next candidate) or named by
    # the requester (never retried elsewhere); the hosts tried so far.
    scheduled: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Event(Base):
    __tablename__ = "livemig_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    migration_id: Mapped[int] = mapped_column(index=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # "step" (an atom changed state), "status" (the migration's), or "note".
    kind: Mapped[str] = mapped_column(sa.String(16))
    name: Mapped[str] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(32), default="")
    message: Mapped[str] = mapped_column(sa.Text, default="")
    controller: Mapped[str] = mapped_column(sa.String(255), default="")


class Reservation(Base):
    """A host's share in one migration, when ZooKeeper is not configured."""

    __tablename__ = "livemig_reservations"

    host: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    migration_id: Mapped[int] = mapped_column(primary_key=True)
    instance_uuid: Mapped[str] = mapped_column(sa.String(36), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Leftover(Base):
    """Something a migration could not undo or could not check (a host that did
    not answer, a revert step that kept failing), kept for `livemig reconcile`."""

    __tablename__ = "livemig_leftovers"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    migration_id: Mapped[int | None] = mapped_column(index=True, default=None)
    host: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    # "domain", "secret", "filter", "reservation", "instance", ...
    kind: Mapped[str] = mapped_column(sa.String(32))
    name: Mapped[str] = mapped_column(sa.String(255))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    resolution: Mapped[str | None] = mapped_column(sa.Text, default=None)


class HostResource(Base):
    """A hypervisor object (secret, filter) that livemig itself defined on a
    host: cleanup removes only these, never what was there before."""

    __tablename__ = "livemig_host_resources"

    host: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    migration_id: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Credential(Base):
    """A registered secret value (for a destination's private libvirt secret),
    encrypted with the key that every controller shares; never in a job."""

    __tablename__ = "livemig_credentials"

    usage: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Operation(Base):
    """A fleet operation (drain, undrain --return, rebalance, consolidate): a
    persisted, resumable unit whose moves are ordinary migrations."""

    __tablename__ = "livemig_operations"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(32), index=True)
    # planning, running, aborting, completed, partial, failed, aborted
    status: Mapped[str] = mapped_column(sa.String(32), index=True)
    requested_by: Mapped[str] = mapped_column(sa.String(255), default="")
    # The host it is about (a drain's), if one.
    host: Mapped[str | None] = mapped_column(sa.String(255), default=None, index=True)
    arguments: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The plan as shown to the operator (the moves are its rows below).
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str | None] = mapped_column(sa.Text, default=None)
    logbook_id: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    flow_id: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    job_id: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    claim_epoch: Mapped[int] = mapped_column(default=0)
    abort_requested: Mapped[bool] = mapped_column(default=False)
    # With abort: also abort the moves in flight (else they finish).
    abort_now: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class OperationMove(Base):
    """One instance to move in an operation: planned, then submitted as a
    migration (linked by id, so a resumed operation never submits it twice)."""

    __tablename__ = "livemig_operation_moves"
    # By position, not by instance: a plan's stop-over moves one instance twice.
    __table_args__ = (sa.UniqueConstraint("operation_id", "position", name="uq_livemig_operation_moves_position"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    operation_id: Mapped[int] = mapped_column(index=True)
    position: Mapped[int] = mapped_column(default=0)
    instance_uuid: Mapped[str] = mapped_column(sa.String(36))
    instance_name: Mapped[str] = mapped_column(sa.String(255))
    source_host: Mapped[str] = mapped_column(sa.String(255))
    # The planned destination (the migration's own may differ after a retry).
    dest_host: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    # planned, submitted, completed, failed, skipped, cancelled
    status: Mapped[str] = mapped_column(sa.String(32))
    migration_id: Mapped[int | None] = mapped_column(default=None, index=True)
    reason: Mapped[str | None] = mapped_column(sa.Text, default=None)
    # A planned operation's wave (rebalance, consolidate): submitted only once
    # every move of the waves before it has ended. None (a drain): no order.
    wave: Mapped[int | None] = mapped_column(default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class OperationEvent(Base):
    """An operation's audit trail: planned, confirmed, submitted, a move's end,
    aborted, resumed by, ended."""

    __tablename__ = "livemig_operation_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    operation_id: Mapped[int] = mapped_column(index=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(sa.String(32))
    message: Mapped[str] = mapped_column(sa.Text, default="")
    controller: Mapped[str] = mapped_column(sa.String(255), default="")


class LoadSample(Base):
    """What a host, or one instance on it, used over one sampling interval
    (livemig.load.sampler): CPU as a fraction of the host's CPUs (so an
    instance's figure times `host_cpus` is in cores), memory in use in MiB.
    A host's own sample has no instance_uuid. Older samples are pruned."""

    __tablename__ = "livemig_load_samples"
    __table_args__ = (sa.Index("ix_livemig_load_samples_host_at", "host", "at"),
                      sa.Index("ix_livemig_load_samples_instance_at", "instance_uuid", "at"))

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    # The end of the interval the sample covers.
    at: Mapped[dt.datetime] = mapped_column(index=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    instance_uuid: Mapped[str | None] = mapped_column(sa.String(36), default=None)
    cpu: Mapped[float] = mapped_column(default=0.0)
    # The host's CPU count when sampled: cpu * host_cpus is in cores.
    host_cpus: Mapped[int] = mapped_column(default=0)
    memory_used_mb: Mapped[float] = mapped_column(default=0.0)
    # How long the interval was (two counter readings apart).
    interval_s: Mapped[float] = mapped_column(default=0.0)
