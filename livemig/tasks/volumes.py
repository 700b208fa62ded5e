"""Volume setup on the destination: reachability and disk secrets."""
from __future__ import annotations

from typing import Any

from taskflow.types.failure import Failure

from livemig.credentials import registered_credential
from livemig.errors import PrecheckFailed
from livemig.host_resources import KeptForAnotherUser, forget, record_created, why_keep
from livemig.tasks.destination import DestinationSetupTask


class VolumeUnreachable(PrecheckFailed):
    pass


class SetUpVolumesOnDestination(DestinationSetupTask):
    """Checks every attached volume is reachable from the destination and
    defines there the secrets its disks authenticate with.

    Reversion strategy: undefine on the destination only the secrets this step
    created (recorded before creating, so a crash cannot hide one), unless the
    VM already runs there.
    """

    default_provides = "volume_setup"
    resource_kind = "secret"

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str) -> dict[str, Any]:
        domain = self.source_domain(instance_uuid, source_host)
        src_driver, src_uri = self.driver_and_uri(source_host)
        dst_driver, dst_uri = self.driver_and_uri(dest_host)
        created = self.created_so_far(migration_id)
        for disk in domain.disks:
            ok, why = dst_driver.volume_reachable(dst_uri, disk)
            if not ok:
                raise VolumeUnreachable(f"volume {disk.source} ({disk.target}) unreachable from {dest_host}: {why}")
            usage = disk.secret_usage
            if not usage or dst_driver.secret_defined(dst_uri, usage):
                continue
            # Record first: if we die right after creating, the revert still knows.
            self.record_resource(migration_id, usage, "created")
            record_created(self.services.db, dest_host, "secret", usage, migration_id)
            src_driver.copy_secret(src_uri, dst_uri, usage, disk.secret_type or "iscsi",
                                   fallback_value=registered_credential(self.services, usage))
            created.append(usage)
            self.note(migration_id, f"defined secret {usage} on {dest_host}")
        return {"secrets": created, "disks": len(domain.disks)}

    def revert(self, result: Any, migration_id: int, instance_uuid: str, dest_host: str,
               flow_failures: dict[str, Failure], **kwargs: Any) -> None:
        def remove(driver, uri: str, usage: str) -> bool:
            # Created for this migration, but another may have found it since and relied on it.
            keep = why_keep(self.services.db, driver, uri, dest_host, "secret", usage, migration_id, instance_uuid)
            if keep is not None:
                raise KeptForAnotherUser(f"kept it: {keep}")
            removed = driver.undefine_secret(uri, usage)
            forget(self.services.db, dest_host, "secret", usage)
            return removed

        self.remove_created(migration_id, instance_uuid, dest_host, remove)
