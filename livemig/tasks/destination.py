"""What the two destination pre-operations (volumes, network) share: they
define things on the destination, record each before creating it, and their
reverts remove exactly those, unless the VM already runs there."""
from __future__ import annotations

from typing import Callable

from livemig.drivers.base import Driver, DomainInfo
from livemig.errors import LivemigError, PrecheckFailed
from livemig.persistence.inventory import created_resources
from livemig.tasks.base import LOG, MigrationTask


class DestinationSetupTask(MigrationTask):
    # What this step defines, for messages ("secret", "filter").
    resource_kind = "resource"

    def source_domain(self, instance_uuid: str, source_host: str) -> DomainInfo:
        driver, uri = self.driver_and_uri(source_host)
        domain = driver.find_domain(uri, instance_uuid)
        if domain is None:
            raise PrecheckFailed(f"instance {instance_uuid} is no longer on {source_host}")
        return domain

    def created_so_far(self, migration_id: int) -> list[str]:
        """What this step created in an earlier (interrupted) run too."""
        with self.services.db.reading() as session:
            return created_resources(session, migration_id, self.name)

    def runs_on(self, host: str, instance_uuid: str) -> bool:
        try:
            domain = self.find_domain(host, instance_uuid)
        except LivemigError:
            return False
        return domain is not None and domain.running

    def remove_created(self, migration_id: int, instance_uuid: str, dest_host: str,
                       remove: Callable[[Driver, str, str], bool]) -> None:
        """The revert: undefine what this step created on the destination."""
        created = self.created_so_far(migration_id)
        if not created:
            return
        if self.runs_on(dest_host, instance_uuid):
            self.note(migration_id, f"kept {self.resource_kind}s {created} on {dest_host}: the VM runs there")
            return
        driver, uri = self.driver_and_uri(dest_host)
        for name in created:
            try:
                remove(driver, uri, name)
                self.record_resource(migration_id, name, "removed")
                self.note(migration_id, f"removed {self.resource_kind} {name} from {dest_host}")
            except LivemigError as exc:
                LOG.warning("migration %s: could not remove %s %s from %s: %s", migration_id, self.resource_kind,
                            name, dest_host, exc)
                self.note(migration_id, f"could not remove {self.resource_kind} {name} from {dest_host}: {exc}",
                          "error")
