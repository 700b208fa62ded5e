"""The live-migration flow."""
from __future__ import annotations

from typing import Any, Mapping

from taskflow.patterns import linear_flow

from livemig.config import MIGRATION_OPTIONS, check_migration_options
from livemig.flows import keys
from livemig.services import flow_services
from livemig.tasks.cleanup import CleanUpSource, UpdateInstanceHost
from livemig.tasks.lifecycle import MIGRATE_STEP, MarkMigrationCompleted, RollBackOrTerminateInstance
from livemig.tasks.migrate import MigrateDomain
from livemig.tasks.network import SetUpNetworkOnDestination
from livemig.tasks.precheck import CheckMigrationPrerequisites, MarkInstanceMigrating
from livemig.tasks.reservation import MarkMigrationPreparing, ReleaseHosts, ReserveHosts
from livemig.tasks.volumes import SetUpVolumesOnDestination

# The store a caller provides; every other value is provided by a task.
REQUIRED_STORE_KEYS = frozenset({keys.MIGRATION_ID, keys.INSTANCE_UUID, keys.SOURCE_HOST, keys.DEST_HOST})


def get_live_migration_flow(options: Mapping[str, Any] | None = None) -> linear_flow.Flow:
    """Builds the flow that live-migrates one instance.

    1. rollback-or-terminate: nothing; its revert, the last to run, decides
       between leaving the VM on the host it runs on and terminating it.
    2. reserve-hosts: hold both hosts within their limits (waits in `queued`).
    3. mark-migration-preparing.
    4. check-migration-prerequisites: hosts, zone, capacity, CPU, versions.
    5. mark-instance-migrating.
    6. set-up-volumes-on-destination: reachability and disk secrets.
    7. set-up-network-on-destination: bridges/networks and filters.
    8. migrate-domain: live migration with progress, verified.
    9. update-instance-host: the inventory follows the VM.
    10. clean-up-source: best effort, never rolls back.
    11. release-hosts.
    12. mark-migration-completed.

    `options` are the migration's own (config.MIGRATION_OPTIONS), saved in
    its logbook; everything else comes from the settings of the process that
    builds the flow (services.flow_services), so that no job carries a
    poster's database URL, hosts or policies.
    """
    services = flow_services(check_migration_options(_options_only(options or {})))
    return linear_flow.Flow(keys.FLOW_NAME).add(
        RollBackOrTerminateInstance(services, name="rollback-or-terminate"),
        ReserveHosts(services, name="reserve-hosts"),
        MarkMigrationPreparing(services, name="mark-migration-preparing"),
        CheckMigrationPrerequisites(services, name="check-migration-prerequisites"),
        MarkInstanceMigrating(services, name="mark-instance-migrating"),
        SetUpVolumesOnDestination(services, name="set-up-volumes-on-destination"),
        SetUpNetworkOnDestination(services, name="set-up-network-on-destination"),
        MigrateDomain(services, name=MIGRATE_STEP),
        UpdateInstanceHost(services, name="update-instance-host"),
        CleanUpSource(services, name="clean-up-source"),
        ReleaseHosts(services, name="release-hosts"),
        MarkMigrationCompleted(services, name="mark-migration-completed"),
    )


def _options_only(saved: Mapping[str, Any]) -> Mapping[str, Any]:
    # Logbooks saved before options existed hold the poster's whole settings
    # (recognisable by their database URL): of those, only what a requester
    # may choose still applies.
    if "database_url" in saved:
        return {name: saved[name] for name in MIGRATION_OPTIONS if name in saved}
    return saved


FACTORY_NAME = f"{__name__}.get_live_migration_flow"
