"""The live-migration flow."""
from __future__ import annotations

from typing import Any, Mapping

from taskflow.patterns import linear_flow

from livemig.config import MIGRATION_OPTIONS, check_migration_options
from livemig.flows import keys
from livemig.services import flow_services
from livemig.tasks.attempts import ChooseDestination, RetryOnNextDestination
from livemig.tasks.cleanup import CleanUpSource, UpdateInstanceHost
from livemig.tasks.lifecycle import MIGRATE_STEP, MarkMigrationCompleted, RollBackOrTerminateInstance
from livemig.tasks.migrate import MigrateDomain
from livemig.tasks.network import SetUpNetworkOnDestination
from livemig.tasks.precheck import CheckMigrationPrerequisites, MarkInstanceMigrating
from livemig.tasks.reservation import MarkMigrationPreparing, ReleaseHosts, ReserveHosts
from livemig.tasks.storage import CreateDiskImagesOnDestination, FinishStorageCopy
from livemig.tasks.volumes import SetUpVolumesOnDestination

# The store a caller provides; every other value is provided by a task.
# DEST_HOST is the requested (or first chosen) destination; each attempt's
# own comes from choose-destination (ATTEMPT_DEST_HOST).
REQUIRED_STORE_KEYS = frozenset({keys.MIGRATION_ID, keys.INSTANCE_UUID, keys.SOURCE_HOST, keys.DEST_HOST})
ATTEMPTS_FLOW = "destination-attempts"
RETRY_NAME = "retry-on-next-destination"


# Tasks that work on the current attempt's destination read it here.
ON_ATTEMPT_DEST = {keys.DEST_HOST: keys.ATTEMPT_DEST_HOST}


def get_live_migration_flow(options: Mapping[str, Any] | None = None) -> linear_flow.Flow:
    """Builds the flow that live-migrates one instance.

    1. rollback-or-terminate: nothing; its revert, the last to run, decides
       between leaving the VM on the host it runs on and terminating it.
    2. destination-attempts: a subflow under the retry controller
       retry-on-next-destination; a failed attempt is reverted (everything
       it did on its destination undone, its reservations released) and,
       if livemig chose the destination and the VM is intact on its source,
       tried again on the next host, up to max_retries times:
       2.1 choose-destination: this attempt's host (from the database).
       2.2 reserve-hosts: hold both hosts within their limits (waits in `queued`).
       2.3 mark-migration-preparing.
       2.4 check-migration-prerequisites: hosts, zone, capacity, CPU, versions.
       2.5 mark-instance-migrating.
       2.6 set-up-volumes-on-destination: reachability and disk secrets.
       2.7 set-up-network-on-destination: bridges/networks and filters.
       2.8 create-disk-images-on-destination: for a storage copy, the
           empty images the copied disks go into.
       2.9 migrate-domain: live migration with progress, verified.
    3. update-instance-host: the inventory follows the VM (past switchover:
       nothing from here on is retried elsewhere).
    4. clean-up-source: best effort, never rolls back.
    5. finish-storage-copy: the source's copied images, once the VM runs
       on the destination (best effort).
    6. release-hosts.
    7. mark-migration-completed.

    `options` are the migration's own (config.MIGRATION_OPTIONS), saved in
    its logbook; everything else comes from the settings of the process that
    builds the flow (services.flow_services), so that no job carries a
    poster's database URL, hosts or policies.
    """
    services = flow_services(check_migration_options(_options_only(options or {})))
    attempts = linear_flow.Flow(ATTEMPTS_FLOW, retry=RetryOnNextDestination(services, name=RETRY_NAME)).add(
        ChooseDestination(services, name="choose-destination"),
        ReserveHosts(services, name="reserve-hosts", rebind=ON_ATTEMPT_DEST),
        MarkMigrationPreparing(services, name="mark-migration-preparing"),
        CheckMigrationPrerequisites(services, name="check-migration-prerequisites", rebind=ON_ATTEMPT_DEST),
        MarkInstanceMigrating(services, name="mark-instance-migrating"),
        SetUpVolumesOnDestination(services, name="set-up-volumes-on-destination", rebind=ON_ATTEMPT_DEST),
        SetUpNetworkOnDestination(services, name="set-up-network-on-destination", rebind=ON_ATTEMPT_DEST),
        CreateDiskImagesOnDestination(services, name="create-disk-images-on-destination", rebind=ON_ATTEMPT_DEST),
        MigrateDomain(services, name=MIGRATE_STEP, rebind=ON_ATTEMPT_DEST),
    )
    return linear_flow.Flow(keys.FLOW_NAME).add(
        RollBackOrTerminateInstance(services, name="rollback-or-terminate"),
        attempts,
        UpdateInstanceHost(services, name="update-instance-host", rebind=ON_ATTEMPT_DEST),
        CleanUpSource(services, name="clean-up-source", rebind=ON_ATTEMPT_DEST),
        FinishStorageCopy(services, name="finish-storage-copy", rebind=ON_ATTEMPT_DEST),
        ReleaseHosts(services, name="release-hosts", rebind=ON_ATTEMPT_DEST),
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
