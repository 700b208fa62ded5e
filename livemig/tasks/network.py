"""Network setup on the destination: bridges/networks and security-group filters."""
from __future__ import annotations

from typing import Any

from taskflow.types.failure import Failure

from livemig.drivers.base import FilterConflict
from livemig.errors import PrecheckFailed
from livemig.host_resources import KeptForAnotherUser, forget, record_created, why_keep
from livemig.tasks.destination import DestinationSetupTask


class NetworkMissing(PrecheckFailed):
    pass


class SetUpNetworkOnDestination(DestinationSetupTask):
    """Checks the destination has every bridge or network the VM's interfaces
    use and defines there the filters they reference, with identical rules.
    MAC and IP addresses travel with the domain definition unchanged.

    Reversion strategy: undefine on the destination only the filters this step
    created, unless the VM already runs there.
    """

    default_provides = "network_setup"
    resource_kind = "filter"

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str) -> dict[str, Any]:
        domain = self.source_domain(instance_uuid, source_host)
        src_driver, src_uri = self.driver_and_uri(source_host)
        dst_driver, dst_uri = self.driver_and_uri(dest_host)
        created = self.created_so_far(migration_id)
        for iface in domain.interfaces:
            ok, why = dst_driver.network_present(dst_uri, iface)
            if not ok:
                raise NetworkMissing(f"interface {iface.mac}: {why}")
            if not iface.filter:
                continue
            wanted = src_driver.filter_xml(src_uri, iface.filter)
            if wanted is None:
                raise PrecheckFailed(f"filter {iface.filter} used by {iface.mac} is missing on {source_host}")
            present = dst_driver.filter_xml(dst_uri, iface.filter)
            if present is None:
                self.record_resource(migration_id, iface.filter, "created")
                record_created(self.services.db, dest_host, "filter", iface.filter, migration_id)
                dst_driver.define_filter(dst_uri, wanted)
                created.append(iface.filter)
                self.note(migration_id, f"defined filter {iface.filter} on {dest_host}")
            elif present != wanted:
                raise FilterConflict(f"filter {iface.filter} on {dest_host} has different rules than on {source_host}")
        return {"filters": sorted(set(created)), "interfaces": len(domain.interfaces)}

    def revert(self, result: Any, migration_id: int, instance_uuid: str, dest_host: str,
               flow_failures: dict[str, Failure], **kwargs: Any) -> None:
        def remove(driver, uri: str, name: str) -> bool:
            # Created for this migration, but another may have found it since and relied on it.
            keep = why_keep(self.services.db, driver, uri, dest_host, "filter", name, migration_id, instance_uuid)
            if keep is not None:
                raise KeptForAnotherUser(f"kept it: {keep}")
            removed = driver.undefine_filter(uri, name)
            forget(self.services.db, dest_host, "filter", name)
            return removed

        self.remove_created(migration_id, instance_uuid, dest_host, remove)
