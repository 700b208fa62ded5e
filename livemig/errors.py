"""The exceptions livemig raises, each with the CLI exit code it maps to.

Exit codes (documented in the README):
  0 success, 1 the migration ran and failed (the VM stayed on its source or was
  terminated), 2 usage error, 3 not found, 4 refused by a precheck or conflict,
  5 not authorized, 6 a service (database, host, ZooKeeper) is unreachable,
  7 timed out waiting (queued too long).
"""
from __future__ import annotations


class LivemigError(Exception):
    """Base class of every error livemig reports to its callers."""

    exit_code = 1


class MigrationFailed(LivemigError):
    """The migration ran and did not complete; the record says why."""

    exit_code = 1

    def __init__(self, message: str, migration_id: int | None = None, status: str | None = None):
        super().__init__(message)
        self.migration_id = migration_id
        self.status = status


class InvalidInput(LivemigError):
    exit_code = 2


class NotFound(LivemigError):
    exit_code = 3


class InstanceNotFound(NotFound):
    pass


class HostNotFound(NotFound):
    pass


class MigrationNotFound(NotFound):
    pass


class PrecheckFailed(LivemigError):
    """The request is well formed but the world does not allow it."""

    exit_code = 4


class HostDisabled(PrecheckFailed):
    pass


class InstanceNotOnSource(PrecheckFailed):
    """The hypervisor of the source does not run the instance: no destination
    would change that, so none other is tried."""


class HostInMaintenance(PrecheckFailed):
    """The destination is in maintenance (a drain empties it): no new placements."""


class HostInStandby(PrecheckFailed):
    """The destination is in standby (a consolidation emptied it): no placements until `host wake`."""


class InsufficientCapacity(PrecheckFailed):
    pass


class CpuIncompatible(PrecheckFailed):
    pass


class Conflict(PrecheckFailed):
    pass


class NoValidHost(PrecheckFailed):
    """No host may take the instance; the message says, per host, why."""


class NotAuthorized(LivemigError):
    exit_code = 5


class ServiceUnavailable(LivemigError):
    exit_code = 6


class HostUnreachable(ServiceUnavailable):
    pass


class DatabaseUnavailable(ServiceUnavailable):
    pass


class CoordinationUnavailable(ServiceUnavailable):
    pass


class QueueTimeout(LivemigError):
    exit_code = 7


class MigrationEnded(Conflict):
    """The migration's outcome is recorded, and an outcome is final: none of its steps may run again."""

    def __init__(self, message: str, migration_id: int | None = None, status: str | None = None):
        super().__init__(message)
        self.migration_id = migration_id
        self.status = status
