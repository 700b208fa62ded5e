"""Volume setup on the destination: reachability and disk secrets."""
from __future__ import annotations

from typing import Any

from taskflow.types.failure import Failure

from livemig.drivers.base import DomainInfo
from livemig.errors import LivemigError, PrecheckFailed
from livemig.persistence.inventory import created_resources
from livemig.tasks.base import LOG, MigrationTask
from livemig.credentials import registered_credential


class VolumeUnreachable(PrecheckFailed):
    pass


class SetUpVolumesOnDestination(MigrationTask):
    """Checks every attached volume is reachable from the destination and
    defines there the secrets its disks authenticate with.

    Reversion strategy: undefine on the destination only the secrets this step
    created (recorded before creating, so a crash cannot hide one), unless the
    VM already runs there.
    """

    default_provides = "volume_setup"

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str) -> dict[str, Any]:
        src_driver, src_uri = self.driver_and_uri(source_host)
        dst_driver, dst_uri = self.driver_and_uri(dest_host)
        domain = src_driver.find_domain(src_uri, instance_uuid)
        if domain is None:
            raise PrecheckFailed(f"instance {instance_uuid} is no longer on {source_host}")
        created: list[str] = []
        with self.services.db.session() as session:
            created = created_resources(session, migration_id, self.name)
        for disk in domain.disks:
            ok, why = dst_driver.volume_reachable(dst_uri, disk)
            if not ok:
                raise VolumeUnreachable(f"volume {disk.source} ({disk.target}) unreachable from {dest_host}: {why}")
            usage = disk.secret_usage
            if not usage or dst_driver.secret_defined(dst_uri, usage):
                continue
            # Record first: if we die right after creating, the revert still knows.
            self.record_resource(migration_id, usage, "created")
            src_driver.copy_secret(src_uri, dst_uri, usage, disk.secret_type or "iscsi",
                                   fallback_value=registered_credential(self.services.settings, usage))
            created.append(usage)
            self.note(migration_id, f"defined secret {usage} on {dest_host}")
        return {"secrets": created, "disks": len(domain.disks)}

    def revert(self, result: Any, migration_id: int, instance_uuid: str, dest_host: str,
               flow_failures: dict[str, Failure], **kwargs: Any) -> None:
        with self.services.db.session() as session:
            created = created_resources(session, migration_id, self.name)
        if not created:
            return
        driver, uri = self.driver_and_uri(dest_host)
        if _runs_on(self, dest_host, instance_uuid):
            self.note(migration_id, f"kept secrets {created} on {dest_host}: the VM runs there")
            return
        for usage in created:
            try:
                driver.undefine_secret(uri, usage)
                self.record_resource(migration_id, usage, "removed")
                self.note(migration_id, f"removed secret {usage} from {dest_host}")
            except LivemigError as exc:
                LOG.warning("migration %s: could not remove secret %s from %s: %s",
                            migration_id, usage, dest_host, exc)
                self.note(migration_id, f"could not remove secret {usage} from {dest_host}: {exc}", "error")


def _runs_on(task: MigrationTask, host: str, instance_uuid: str) -> bool:
    try:
        domain: DomainInfo | None = task.find_domain(host, instance_uuid)
    except LivemigError:
        return False
    return domain is not None and domain.running
