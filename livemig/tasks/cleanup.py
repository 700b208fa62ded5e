"""Post-migrate: the inventory follows the VM, and the source is tidied."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from livemig import fencing
from livemig.errors import LivemigError
from livemig.host_resources import created_by_livemig, forget, needed_by_other_migration
from livemig.persistence.models import Instance
from livemig.states import InstanceState
from livemig.tasks.base import LOG, MigrationTask

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
    """Removes source-side leftovers of this VM: a stale definition, and the
    filters and disk secrets that livemig itself defined there (a HostResource
    record says so), that no other domain there uses and that no other
    unfinished migration of that host may need. What was there before livemig
    stays. Immediately before each removal the claim is checked (a stale
    controller raises Fenced, having removed nothing more) and a definition is
    looked at again. Problems are recorded as events and never roll the VM back.

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
            if stale is not None and not stale.running and self._still_ours(migration_id):
                # Looked at again after the claim check: what it saw before a
                # freeze may be the VM, started there again, by now.
                stale = driver.find_domain(uri, instance_uuid)
                if stale is not None and not stale.running:
                    driver.destroy_domain(uri, instance_uuid)
                    removed.append(f"definition of {instance_uuid}")
            others = [d for d in driver.list_domains(uri) if d.uuid != instance_uuid]
        except fencing.Fenced:
            raise
        except LivemigError as exc:
            self.note(migration_id, f"source cleanup skipped: {exc}", "error")
            return {"removed": removed}
        if moved is None:
            return {"removed": removed}
        used = {("filter", i.filter) for d in others for i in d.interfaces if i.filter}
        used |= {("secret", k.secret_usage) for d in others for k in d.disks if k.secret_usage}
        candidates = sorted({("filter", i.filter) for i in moved.interfaces
                             if i.filter and i.filter not in LIBVIRT_BUILTIN_FILTERS}
                            | {("secret", k.secret_usage) for k in moved.disks if k.secret_usage})
        undefine = {"filter": driver.undefine_filter, "secret": driver.undefine_secret}
        for kind, name in candidates:
            if (kind, name) in used:
                continue
            with self.services.db.reading() as session:
                if not created_by_livemig(session, source_host, kind, name):
                    continue  # there before livemig: not ours to remove
                needed = needed_by_other_migration(session, source_host, kind, name, migration_id)
            if needed is not None:
                self.note(migration_id, f"kept {kind} {name} on {source_host}: {needed}")
                continue
            if not self._still_ours(migration_id):
                continue
            try:
                was_there = undefine[kind](uri, name)
            except LivemigError as exc:
                self.note(migration_id, f"could not remove {kind} {name} from the source: {exc}", "error")
                continue
            forget(self.services.db, source_host, kind, name)
            if was_there:
                removed.append(f"{kind} {name}")
        if removed:
            self.note(migration_id, f"removed from {source_host}: {', '.join(removed)}")
        return {"removed": removed}

    def _still_ours(self, migration_id: int) -> bool:
        """Right before a removal: raises Fenced if another controller claimed
        the migration since (its cleanup is its own); False, with the reason
        logged, if the claim cannot be checked (nothing is removed then: a
        leftover is better than a secret a VM needs)."""
        try:
            fencing.ensure_current_claim(self.services.db, migration_id)
        except fencing.Fenced:
            raise
        except LivemigError as exc:
            LOG.warning("migration %s: %s: nothing removed, the claim cannot be checked: %s",
                        migration_id, self.name, exc)
            return False
        return True
