"""Issue 16, block migration: a VM on local storage migrates with its disk
copied into an image livemig pre-creates on the destination; the precheck
says how each disk travels; a failed migration removes the image it
created, and never one it did not."""
from __future__ import annotations

import pytest

import livemig
from livemig.drivers.base import DiskImage, DiskInfo
from livemig.errors import MigrationFailed, PrecheckFailed

CTX = livemig.admin_context("tests")
DISK = "/var/lib/libvirt/images/vm-local.qcow2"
BASE = "/var/lib/libvirt/images/base.qcow2"
GIB = 2**30


@pytest.fixture
def local_vm(cloud):
    """vm-local on a: a local qcow2 disk (with data written) and the lab's iSCSI kind of network disk."""
    a = cloud.uri("a")
    cloud.driver.create_disk_image(a, DiskImage(DISK, "qcow2", 2 * GIB))
    cloud.driver.write_to_image(a, DISK, "written before the migration")
    uuid = cloud.driver.create_domain(a, "vm-local", disks=[
        DiskInfo("vda", "file", DISK), DiskInfo("vdb", "network", "iscsi://127.0.0.1:3260/iqn.x/1", "iscsi",
                                                [["127.0.0.1", 3260]])])
    livemig.sync_hosts(CTX, settings=cloud.settings)
    return uuid


def failed_migration(cloud, options):
    with pytest.raises(MigrationFailed) as failed:
        livemig.migrate(CTX, "vm-local", "a", "b", options=options, settings=cloud.settings)
    return livemig.show_migration(failed.value.migration_id, settings=cloud.settings)


def notes(cloud, migration_id):
    return [e.message for e in livemig.show_migration(migration_id, settings=cloud.settings).events]


def test_a_full_copy_moves_the_disk_and_its_data(cloud, local_vm):
    view = livemig.migrate(CTX, "vm-local", "a", "b", options={"copy_storage": "full"}, settings=cloud.settings)
    assert view.status == "completed"
    assert cloud.running_on(local_vm) == ["b"]
    image = cloud.driver.images_on(cloud.uri("b"))[DISK]
    assert (image["format"], image["virtual_size"], image["backing"]) == ("qcow2", 2 * GIB, None)
    assert image["data"] == "written before the migration"
    # The source's copy is gone: the VM runs on b, nothing else used it.
    assert DISK not in cloud.driver.images_on(cloud.uri("a"))
    trail = notes(cloud, view.id)
    assert (f"may migrate (copied): disk vda ({DISK}) is a local file not on storage shared by a and b: the whole "
            f"image is copied to b") in trail
    assert any(n.startswith("may migrate (network): disk vdb") for n in trail)
    assert f"created {DISK} on b for disk vda ({DISK}) (qcow2, {2 * GIB} bytes, sparse)" in trail
    assert f"removed the source's image {DISK} from a: the VM runs on b with its copy" in trail
    migrated_with = cloud.domains_on("b")[local_vm]["migrated_with"]
    assert migrated_with["copy_disks"] == ["vda"]
    assert cloud.domains_on("b")[local_vm]["migrated_unsafe"] is False


def test_the_disk_comes_back_the_same_way(cloud, local_vm):
    livemig.migrate(CTX, "vm-local", "a", "b", options={"copy_storage": "full"}, settings=cloud.settings)
    cloud.driver.write_to_image(cloud.uri("b"), DISK, "written on b")
    view = livemig.migrate(CTX, "vm-local", "b", "a", options={"copy_storage": "full"}, settings=cloud.settings)
    assert view.status == "completed"
    assert cloud.driver.images_on(cloud.uri("a"))[DISK]["data"] == "written on b"
    assert DISK not in cloud.driver.images_on(cloud.uri("b"))


def test_a_failed_migration_removes_the_image_it_created(cloud, local_vm):
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "error", "link down", times=5)
    view = failed_migration(cloud, {"copy_storage": "full"})
    assert view.status == "failed"
    assert cloud.running_on(local_vm) == ["a"]
    assert DISK not in cloud.driver.images_on(cloud.uri("b"))
    assert cloud.driver.images_on(cloud.uri("a"))[DISK]["data"] == "written before the migration"
    assert f"removed disk-image {DISK} from b" in notes(cloud, view.id)


def test_an_image_livemig_did_not_create_is_never_overwritten_nor_removed(cloud, local_vm):
    b = cloud.uri("b")
    cloud.driver.create_disk_image(b, DiskImage(DISK, "qcow2", 2 * GIB))
    cloud.driver.write_to_image(b, DISK, "someone else's data")
    view = failed_migration(cloud, {"copy_storage": "full"})
    assert view.status == "failed"
    assert "b already has an image at " + DISK + " that this migration did not create" in view.error_reason
    assert cloud.driver.images_on(b)[DISK]["data"] == "someone else's data"
    assert cloud.running_on(local_vm) == ["a"]
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 0


def test_without_a_storage_copy_the_local_disk_is_refused(cloud, local_vm):
    with pytest.raises(PrecheckFailed, match="copy its storage with --copy-storage full|incremental"):
        livemig.migrate(CTX, "vm-local", "a", "b", settings=cloud.settings)
    assert cloud.driver.images_on(cloud.uri("b")) == {}


def overlay_vm(cloud, base_on_b: bool) -> str:
    a, b = cloud.uri("a"), cloud.uri("b")
    for uri in (a, b) if base_on_b else (a,):
        cloud.driver.create_disk_image(uri, DiskImage(BASE, "qcow2", GIB))
    cloud.driver.create_disk_image(a, DiskImage(DISK, "qcow2", GIB, BASE, "qcow2"))
    uuid = cloud.driver.create_domain(a, "vm-local", disks=[DiskInfo("vda", "file", DISK)])
    livemig.sync_hosts(CTX, settings=cloud.settings)
    return uuid


def test_an_incremental_copy_creates_an_overlay_on_the_backing_image_both_hosts_have(cloud):
    uuid = overlay_vm(cloud, base_on_b=True)
    view = livemig.migrate(CTX, "vm-local", "a", "b", options={"copy_storage": "incremental"},
                           settings=cloud.settings)
    assert view.status == "completed"
    assert cloud.running_on(uuid) == ["b"]
    image = cloud.driver.images_on(cloud.uri("b"))[DISK]
    assert (image["format"], image["virtual_size"], image["backing"]) == ("qcow2", GIB, BASE)
    # Only the overlay leaves the source; the backing image stays on both.
    assert set(cloud.driver.images_on(cloud.uri("a"))) == {BASE}
    assert f"removed the source's image {DISK} from a: the VM runs on b with its copy; its backing image {BASE} " \
           f"stays" in notes(cloud, view.id)


def test_an_incremental_copy_needs_the_backing_image_on_the_destination(cloud):
    uuid = overlay_vm(cloud, base_on_b=False)
    view = failed_migration(cloud, {"copy_storage": "incremental"})
    assert view.status == "failed"
    assert f"its backing image {BASE} is not on b: an incremental copy needs it on both hosts" in view.error_reason
    assert cloud.running_on(uuid) == ["a"]
    assert cloud.driver.images_on(cloud.uri("b")) == {}


def test_the_source_image_stays_while_another_domain_uses_it(cloud, local_vm):
    other = cloud.driver.create_domain(cloud.uri("a"), "vm-sharer", disks=[DiskInfo("vda", "file", DISK)])
    view = livemig.migrate(CTX, "vm-local", "a", "b", options={"copy_storage": "full"}, settings=cloud.settings)
    assert view.status == "completed"
    assert DISK in cloud.driver.images_on(cloud.uri("a"))
    assert f"kept the source's image {DISK} on a: domain vm-sharer uses it" in notes(cloud, view.id)
    assert other in cloud.domains_on("a")
