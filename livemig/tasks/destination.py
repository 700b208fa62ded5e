"""What the two destination pre-operations (volumes, network) share: they
define things on the destination, record each before creating it, and their
reverts remove exactly those, unless the VM already runs there."""
from __future__ import annotations

from typing import Callable

from livemig.drivers.base import Driver, DomainInfo
from livemig import fencing
from livemig.errors import LivemigError, PrecheckFailed
from livemig.host_resources import KeptForAnotherUser
from livemig.locator import Presence, Sighting, locate_on
from livemig.persistence.inventory import created_resources
from livemig.tasks.base import LOG, MigrationTask
from livemig.tasks.undo import StillFailing, record_leftover_for_reconcile, with_backoff


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

    def runs_on(self, host: str, instance_uuid: str) -> Sighting:
        """Where the VM is on `host`, asked with the locator's patience: a host
        that does not answer is UNKNOWN, never "not running"."""
        return locate_on(self.services, host, instance_uuid)

    def remove_created(self, migration_id: int, instance_uuid: str, dest_host: str,
                       remove: Callable[[Driver, str, str], bool]) -> None:
        """The revert: undefine what this step created on the destination,
        unless the VM is there (in any state: a paused VM still needs them)
        or that cannot be told; what is kept for that reason or cannot be
        removed is recorded as a leftover for reconcile. Never raises (but
        Fenced): a raising revert stops TaskFlow's revert chain."""
        try:
            self._remove_created(migration_id, instance_uuid, dest_host, remove)
        except fencing.Fenced:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            LOG.exception("migration %s: revert of %s could not finish", migration_id, self.name)
            record_leftover_for_reconcile(self.services, "revert", self.name, f"revert could not finish: {exc}",
                                          dest_host, migration_id)

    def _remove_created(self, migration_id: int, instance_uuid: str, dest_host: str,
                        remove: Callable[[Driver, str, str], bool]) -> None:
        created = with_backoff(lambda: self.created_so_far(migration_id),
                               f"reading what {self.name} created")
        if not created:
            return
        sighting = self.runs_on(dest_host, instance_uuid)
        if sighting.presence is Presence.UNKNOWN:
            for name in created:
                record_leftover_for_reconcile(self.services, self.resource_kind, name,
                                              f"kept: cannot tell whether the VM uses it ({sighting.error})",
                                              dest_host, migration_id)
            return
        if sighting.presence is Presence.PRESENT and not sighting.domain.incoming:
            self.note(migration_id, f"kept {self.resource_kind}s {created} on {dest_host}: the VM is there "
                                    f"({sighting.state})")
            return
        driver, uri = self.driver_and_uri(dest_host)
        for name in created:
            try:
                fencing.ensure_current_claim(self.services.db, migration_id)
                # Looked at again right before undefining: the VM may have
                # arrived since.
                if self.runs_on(dest_host, instance_uuid).running:
                    self.note(migration_id, f"kept {self.resource_kind} {name} on {dest_host}: the VM runs there")
                    return
                with_backoff(lambda: remove(driver, uri, name), f"removing {self.resource_kind} {name}")
                self.record_resource(migration_id, name, "removed")
                self.note(migration_id, f"removed {self.resource_kind} {name} from {dest_host}")
            except fencing.Fenced:
                raise
            except KeptForAnotherUser as exc:
                # Not a leftover: another domain or migration needs it, and it
                # stays livemig's to remove once the last user has left.
                self.note(migration_id, f"kept {self.resource_kind} {name} on {dest_host}: {exc}")
            except (LivemigError, StillFailing) as exc:
                LOG.warning("migration %s: could not remove %s %s from %s: %s", migration_id, self.resource_kind,
                            name, dest_host, exc)
                record_leftover_for_reconcile(self.services, self.resource_kind, name, f"could not remove: {exc}",
                                              dest_host, migration_id)
