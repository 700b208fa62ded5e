"""State enums stored in the inventory (their values are what the DB holds)."""
from __future__ import annotations

import enum


class InstanceState(str, enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    # Suspended by its guest (ACPI S3/S4): not migratable, woken by the guest
    # or `virsh dompmwakeup`, unlike a paused VM (`virsh resume`).
    PMSUSPENDED = "pmsuspended"
    STOPPED = "stopped"
    MIGRATING = "migrating"
    ERROR = "error"
    DELETED = "deleted"


class MigrationStatus(str, enum.Enum):
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    POST_MIGRATING = "post-migrating"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ERROR = "error"

    @property
    def finished(self) -> bool:
        return self in FINISHED_MIGRATION_STATUSES


FINISHED_MIGRATION_STATUSES = frozenset(
    {MigrationStatus.COMPLETED, MigrationStatus.FAILED, MigrationStatus.CANCELLED, MigrationStatus.ERROR}
)


class UnrecoverablePolicy(str, enum.Enum):
    """What to do with an instance that runs on no host, or on two."""

    TERMINATE = "terminate"
    MARK_ERROR = "mark-error"


class DomainState(str, enum.Enum):
    """A domain's state as a hypervisor driver reports it."""

    RUNNING = "running"
    PAUSED = "paused"
    PMSUSPENDED = "pmsuspended"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    OTHER = "other"


# The inventory's state for a domain a host reports.
INSTANCE_STATE_OF_DOMAIN = {
    DomainState.RUNNING: InstanceState.RUNNING, DomainState.PAUSED: InstanceState.PAUSED,
    DomainState.PMSUSPENDED: InstanceState.PMSUSPENDED, DomainState.SHUTOFF: InstanceState.STOPPED,
    DomainState.CRASHED: InstanceState.ERROR, DomainState.OTHER: InstanceState.ERROR,
}

# TaskFlow's state changes that go into a migration's audit trail.
AUDITED_ATOM_STATES = frozenset({"RUNNING", "SUCCESS", "FAILURE", "REVERTING", "REVERTED", "REVERT_FAILURE"})
AUDITED_FLOW_STATES = frozenset({"RUNNING", "SUCCESS", "REVERTED", "FAILURE", "SUSPENDED"})
