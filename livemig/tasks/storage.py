"""Block migration: the destination images a storage copy needs, and the
source's copies once the VM runs on the destination."""
from __future__ import annotations

from typing import Any

from taskflow.types.failure import Failure

from livemig import fencing
from livemig.disk_sharing import storage_plan_for
from livemig.drivers.base import DiskImage
from livemig.errors import LivemigError, PrecheckFailed
from livemig.host_resources import KeptForAnotherUser, forget, needed_by_other_migration, record_created, why_keep
from livemig.locator import locate_on
from livemig.tasks.destination import DestinationSetupTask
from livemig.tasks.base import MigrationTask

IMAGE_KIND = "disk-image"


class StorageCopyRefused(PrecheckFailed):
    """A disk cannot be copied to this destination (no image to copy from,
    a file already there, an incremental copy without its backing image)."""


class CreateDiskImagesOnDestination(DestinationSetupTask):
    """Pre-creates on the destination, for each local disk the migration
    copies, an empty sparse image of the source's format and virtual size;
    for an incremental copy an overlay on the same backing image, which must
    already be on the destination. A file already at the path is never
    overwritten (the migration is refused).

    Reversion strategy: remove the images this step created (each recorded
    before creating it), unless the VM runs there or another domain or
    unfinished migration uses the path; an image it did not create is
    never touched.
    """

    default_provides = "storage_copy"
    resource_kind = IMAGE_KIND

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str) -> dict[str, Any]:
        copy = self.services.options.copy_storage
        if copy == "off":
            return {"copied": []}
        domain = self.source_domain(instance_uuid, source_host)
        src_driver, src_uri = self.driver_and_uri(source_host)
        dst_driver, dst_uri = self.driver_and_uri(dest_host)
        created = self.created_so_far(migration_id)
        copied: list[dict[str, Any]] = []
        for verdict in storage_plan_for(self.services.db, domain.disks, source_host, dest_host, copy):
            if not verdict.copied:
                continue
            path, disk = verdict.source, f"disk {verdict.target} ({verdict.source})"
            image = src_driver.disk_image(src_uri, path)
            if image is None:
                raise StorageCopyRefused(f"{disk}: no image file at {path} on {source_host} to copy")
            if copy == "incremental":
                if not image.backing:
                    raise StorageCopyRefused(f"{disk} has no backing image: an incremental copy needs one on both "
                                             f"hosts (copy it with --copy-storage full)")
                if dst_driver.disk_image(dst_uri, image.backing) is None:
                    raise StorageCopyRefused(f"{disk}: its backing image {image.backing} is not on {dest_host}: "
                                             f"an incremental copy needs it on both hosts")
                wanted = DiskImage(path, image.format, image.virtual_size, image.backing, image.backing_format)
            else:
                # A full copy flattens the chain into one image.
                wanted = DiskImage(path, image.format, image.virtual_size)
            there = dst_driver.disk_image(dst_uri, path)
            if there is not None and path not in created:
                raise StorageCopyRefused(f"{dest_host} already has an image at {path} that this migration did not "
                                         f"create: it is not overwritten")
            if there is None:
                # Record first: if we die right after creating, the revert still knows.
                self.record_resource(migration_id, path, "created")
                record_created(self.services.db, dest_host, IMAGE_KIND, path, migration_id)
                dst_driver.create_disk_image(dst_uri, wanted)
                over = f", over {wanted.backing}" if wanted.backing else ""
                self.note(migration_id, f"created {path} on {dest_host} for {disk} ({wanted.format}, "
                                        f"{wanted.virtual_size} bytes, sparse{over})")
            copied.append({"target": verdict.target, "path": path, "backing": wanted.backing, "mode": copy})
        return {"copied": copied}

    def revert(self, result: Any, migration_id: int, instance_uuid: str, dest_host: str,
               flow_failures: dict[str, Failure], **kwargs: Any) -> None:
        def remove(driver, uri: str, path: str) -> bool:
            keep = why_keep(self.services.db, driver, uri, dest_host, IMAGE_KIND, path, migration_id, instance_uuid)
            if keep is not None:
                raise KeptForAnotherUser(f"kept it: {keep}")
            removed = driver.delete_disk_image(uri, path)
            forget(self.services.db, dest_host, IMAGE_KIND, path)
            return removed

        self.remove_created(migration_id, instance_uuid, dest_host, remove)


class FinishStorageCopy(MigrationTask):
    """After a block migration: the destination images are the VM's disks
    now (no longer this migration's to remove), and the source's copies are
    removed, each only when the VM is verified running on the destination
    and no other domain on the source, nor another unfinished migration of
    it, uses the path. An incremental copy's backing image stays on both
    hosts. Problems are recorded as events and never roll the VM back.

    Reversion strategy: nothing to undo (it runs after the VM has moved).
    """

    default_provides = "storage_copy_finished"

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str,
                storage_copy: dict[str, Any]) -> dict[str, Any]:
        copied = storage_copy.get("copied", []) if storage_copy else []
        removed: list[str] = []
        for item in copied:
            forget(self.services.db, dest_host, IMAGE_KIND, item["path"])
        if not copied:
            return {"removed": removed}
        try:
            fencing.ensure_current_claim(self.services.db, migration_id)
            dest = locate_on(self.services, dest_host, instance_uuid)
            if not dest.running:
                self.note(migration_id, f"kept the source's images on {source_host}: the VM is not verified "
                                        f"running on {dest_host} ({dest.state})")
                return {"removed": removed}
            driver, uri = self.driver_and_uri(source_host)
            others = [d for d in driver.list_domains(uri) if d.uuid != instance_uuid]
        except LivemigError as exc:
            if isinstance(exc, fencing.Fenced):
                raise
            self.note(migration_id, f"kept the source's images on {source_host}: {exc}", "error")
            return {"removed": removed}
        for item in copied:
            path = item["path"]
            users = [d.name for d in others if any(k.source == path for k in d.disks)]
            with self.services.db.reading() as session:
                needed = needed_by_other_migration(session, source_host, IMAGE_KIND, path, migration_id)
            if users or needed:
                why = f"domain {users[0]} uses it" if users else needed
                self.note(migration_id, f"kept the source's image {path} on {source_host}: {why}")
                continue
            try:
                if driver.delete_disk_image(uri, path):
                    removed.append(path)
                    kept = f"; its backing image {item['backing']} stays" if item.get("backing") else ""
                    self.note(migration_id, f"removed the source's image {path} from {source_host}: the VM runs on "
                                            f"{dest_host} with its copy{kept}")
            except LivemigError as exc:
                self.note(migration_id, f"could not remove the source's image {path} from {source_host}: {exc}",
                          "error")
        return {"removed": removed}
