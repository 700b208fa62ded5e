"""Issue 13 item 8: shared storage is decided per disk. A network disk may
migrate; a file or block disk only if it lies under a path both hosts
declared shared, and only then is libvirt's UNSAFE flag passed."""
from __future__ import annotations

import pytest

import livemig
from livemig import api
from livemig.drivers.base import DiskInfo, DriverError, MigrationOptions
from livemig.errors import PrecheckFailed
from tests.unit.test_cli import run, snapshot

CTX = livemig.admin_context("tests")
DISK = "/var/lib/x.qcow2"


def vm_with_local_disk(cloud, path: str = DISK) -> str:
    cloud.driver.create_domain(cloud.uri("a"), "vm-local", disks=[DiskInfo(target="vda", kind="file", source=path)])
    livemig.sync_hosts(CTX, settings=cloud.settings)
    return "vm-local"


def test_a_local_file_disk_is_refused_with_its_reason(cloud):
    vm = vm_with_local_disk(cloud)
    before = len(livemig.list_migrations(settings=cloud.settings))
    with pytest.raises(PrecheckFailed) as refused:
        livemig.migrate(CTX, vm, "a", "b", settings=cloud.settings)
    assert str(refused.value) == (f"disk vda ({DISK}) is a local file not on storage shared by a and b; "
                                  "copy its storage with --copy-storage full|incremental")
    assert len(livemig.list_migrations(settings=cloud.settings)) == before  # nothing recorded
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 0


def test_a_disk_shared_by_one_host_only_is_refused(cloud):
    vm = vm_with_local_disk(cloud, "/srv/nfs/vm.qcow2")
    api.set_host_shared_paths(CTX, "a", ["/srv/nfs"], settings=cloud.settings)
    with pytest.raises(PrecheckFailed, match="not on storage shared by a and b"):
        livemig.migrate(CTX, vm, "a", "b", settings=cloud.settings)


def test_a_disk_under_a_path_both_hosts_share_migrates_with_unsafe(cloud):
    vm = vm_with_local_disk(cloud, "/srv/nfs/vms/vm.qcow2")
    api.set_host_shared_paths(CTX, "a", ["/srv/nfs/"], settings=cloud.settings)
    api.set_host_shared_paths(CTX, "b", ["/srv/nfs/vms"], settings=cloud.settings)
    view = livemig.migrate(CTX, vm, "a", "b", settings=cloud.settings)
    assert view.status == "completed"
    uuid = next(u for u, d in cloud.domains_on("b").items() if d["name"] == vm)
    assert cloud.running_on(uuid) == ["b"]
    assert cloud.domains_on("b")[uuid]["migrated_unsafe"] is True
    notes = [e.message for e in livemig.show_migration(view.id, settings=cloud.settings).events]
    assert "may migrate (shared): disk vda (/srv/nfs/vms/vm.qcow2) is on storage shared by a and b" in notes


def test_network_disks_migrate_without_unsafe(cloud):
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert cloud.domains_on("b")[cloud.vm]["migrated_unsafe"] is False
    notes = [e.message for e in livemig.show_migration(view.id, settings=cloud.settings).events]
    assert any(n.startswith("may migrate (network): disk vdb (iscsi://127.0.0.1:3260/") and "network disk" in n
               for n in notes)


def test_the_fake_hypervisor_refuses_a_local_disk_without_unsafe(cloud):
    uuid = cloud.driver.create_domain(cloud.uri("a"), "vm-local", disks=[DiskInfo("vda", "file", DISK)])
    with pytest.raises(DriverError) as refused:
        cloud.driver.migrate(cloud.uri("a"), cloud.uri("b"), uuid, MigrationOptions())
    assert refused.value.code == 81
    assert cloud.running_on(uuid) == ["a"]


def test_the_global_shared_storage_setting_is_gone():
    with pytest.raises(livemig.LivemigError, match="unknown setting.*shared_storage"):
        livemig.Settings.from_dict({"shared_storage": True})


def test_host_shared_paths_from_the_cli(cloud, settings):
    cloud.driver.create_host(cloud.uri("d"))
    added = run(settings, "host", "add", "d", "--uri", cloud.uri("d"),
                "--shared-path", "/srv/nfs/", "--shared-path", "/dev/mapper/lun1")
    assert added.returncode == 0, added.stderr
    assert livemig.list_hosts(settings=settings)[-1].shared_paths == ["/srv/nfs", "/dev/mapper/lun1"]
    listed = run(settings, "host", "list")
    assert "SHARED_PATHS" in listed.stdout and "/dev/mapper/lun1" in listed.stdout
    changed = run(settings, "host", "set", "d", "--shared-path", "/srv/other")
    assert changed.returncode == 0, changed.stderr
    assert [h for h in livemig.list_hosts(settings=settings) if h.name == "d"][0].shared_paths == ["/srv/other"]
    cleared = run(settings, "host", "set", "d", "--no-shared-paths")
    assert cleared.returncode == 0, cleared.stderr
    assert [h for h in livemig.list_hosts(settings=settings) if h.name == "d"][0].shared_paths == []
    # Bad input: one line, non-zero, nothing changed.
    before = snapshot(settings)
    bad = run(settings, "host", "set", "d", "--shared-path", "relative/dir")
    assert bad.returncode != 0 and bad.stderr.strip() == "livemig: error: shared path 'relative/dir' is not an absolute path"
    assert snapshot(settings) == before
