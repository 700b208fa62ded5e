"""Post-migrate: the inventory follows the VM, and the source is tidied."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from livemig.errors import LivemigError
from livemig.persistence.models import Instance
from livemig.states import InstanceState
from livemig.tasks.base import MigrationTask

# Filters that ship with libvirt: shared by everything, never removed.
LIBVIRT_BUILTIN_FILTERS = frozenset({
    "allow-arp", "allow-dhcp", "allow-dhcp-server", "allow-dhcpv6", "allow-dhcpv6-server", "allow-incoming-ipv4",
    "allow-incoming-ipv6", "allow-ipv4", "allow-ipv6", "clean-traffic", "clean-traffic-gateway",
    "no-arp-ip-spoofing", "no-arp-mac-spoofing", "no-arp-spoofing", "no-ip-multicast", "no-ip-spoofing",
    "no-ipv6-multicast", "no-ipv6-spoofing", "no-mac-broadcast", "no-mac-spoofing", "no-other-l2-traffic",
    "no-other-rarp-traffic", "qemu-announce-self", "qemu-announce-self-rarp",
})


class UpdateInstanceHost(MigrationTask):
    """Records the destination as the instance's host, state `running`.

    Reversion strategy: none here; the first task's revert records where the VM
    really runs after looking at both hosts.
    """

    def execute(self, migration_id: int, instance_uuid: str, dest_host: str) -> None:
        instances = Instance.__table__
        with self.services.db.autocommit() as conn:
            conn.execute(sa.update(instances).where(instances.c.uuid == instance_uuid)
                         .values(host=dest_host, state=InstanceState.RUNNING.value))


class CleanUpSource(MigrationTask):
    """Removes source-side leftovers only this VM used: its filters, its disk
    secrets and a stale definition. Problems are recorded as events and never
    roll the VM back.

    Reversion strategy: nothing to undo (removing leftovers is not undone).
    """

    default_provides = "source_cleanup"

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str) -> dict[str, Any]:
        removed: list[str] = []
        try:
            driver, uri = self.driver_and_uri(source_host)
            dest_driver, dest_uri = self.driver_and_uri(dest_host)
            moved = dest_driver.find_domain(dest_uri, instance_uuid)
            stale = driver.find_domain(uri, instance_uuid)
            if stale is not None and not stale.running:
                driver.destroy_domain(uri, instance_uuid)
                removed.append(f"definition of {instance_uuid}")
            others = [d for d in driver.list_domains(uri) if d.uuid != instance_uuid]
        except LivemigError as exc:
            self.note(migration_id, f"source cleanup skipped: {exc}", "error")
            return {"removed": removed}
        if moved is None:
            return {"removed": removed}
        used_filters = {i.filter for d in others for i in d.interfaces if i.filter}
        used_secrets = {k.secret_usage for d in others for k in d.disks if k.secret_usage}
        for name in sorted({i.filter for i in moved.interfaces if i.filter}):
            if name in used_filters or name in LIBVIRT_BUILTIN_FILTERS:
                continue
            self._try(migration_id, f"filter {name}", lambda n=name: driver.undefine_filter(uri, n), removed)
        for usage in sorted({k.secret_usage for k in moved.disks if k.secret_usage}):
            if usage in used_secrets:
                continue
            self._try(migration_id, f"secret {usage}", lambda u=usage: driver.undefine_secret(uri, u), removed)
        if removed:
            self.note(migration_id, f"removed from {source_host}: {', '.join(removed)}")
        return {"removed": removed}

    def _try(self, migration_id: int, what: str, action, removed: list[str]) -> None:
        try:
            if action():
                removed.append(what)
        except LivemigError as exc:
            self.note(migration_id, f"could not remove {what} from the source: {exc}", "error")
