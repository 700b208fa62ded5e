"""Issue 16, block migration between the lab's real libvirt hosts: a guest
whose only disk is a local qcow2 image in its host's private image
directory migrates with the image copied (NON_SHARED_DISK into an image
livemig pre-creates, sparse, on the destination); a failed one removes the
image it created there."""
from __future__ import annotations

import json
import subprocess

import pytest

import livemig
from livemig.lab.echo import ask
from tests.integration.labtools import (
    active_on, cli, defined_on, migration_row, wait_for_running_migration,
)

CTX = livemig.admin_context("tests")


@pytest.fixture(scope="module")
def local_guest(lab, lab_settings):
    state = lab.state()
    g = max(int(x["name"][2:]) for x in state["guests"]) + 1 if state["guests"] else 1
    guest = lab.add_guest(state, g, host_index=1, local_disk=True)
    livemig.sync_hosts(CTX, settings=lab_settings)
    try:
        yield guest
    finally:
        lab.remove_guest(guest["name"])
        livemig.sync_hosts(CTX, settings=lab_settings)


def image_info(path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                                     capture_output=True, text=True).stdout)


def host_of(lab, guest) -> int:
    on = active_on(lab, guest["uuid"])
    assert len(on) == 1, on
    return int(on[0][len(lab.cfg.host_prefix):])


def test_a_local_disk_migrates_with_its_data(lab, lab_settings, local_guest):
    g = local_guest
    src = host_of(lab, g)
    dst = 2 if src == 1 else 1
    boot_id = ask(g["ip"], 9)
    assert ask(g["ip"], 10, "written-before-migration") == "written-before-migration"
    assert not lab.local_image(dst, g["name"]).exists()
    proc = cli(lab_settings, "migrate", "--live", "--copy-storage", "full", lab.host_name(src), g["name"],
               lab.host_name(dst))
    assert proc.returncode == 0, proc.stderr
    assert active_on(lab, g["uuid"]) == [lab.host_name(dst)]
    # Read back on the destination, without writing: the copy carried it.
    assert ask(g["ip"], 10, "?") == "written-before-migration"
    assert ask(g["ip"], 9) == boot_id
    info = image_info(lab.local_image(dst, g["name"]))
    assert (info["format"], info["virtual-size"]) == ("qcow2", lab.LOCAL_DISK_MIB * 2**20)
    # The source's copy is removed once the VM runs on the destination.
    assert not lab.local_image(src, g["name"]).exists()
    messages = [e.message for e in livemig.show_migration(_last_id(lab_settings), settings=lab_settings).events]
    assert any(m.startswith("may migrate (copied): disk vda (/var/lib/libvirt/images/") for m in messages)
    assert any(m.startswith("removed the source's image /var/lib/libvirt/images/") for m in messages)


def test_an_aborted_block_migration_removes_the_image_it_created(lab, lab_settings, local_guest):
    g = local_guest
    src = host_of(lab, g)
    dst = 2 if src == 1 else 1
    assert ask(g["ip"], 10, "before-the-abort") == "before-the-abort"
    runner = cli(lab_settings, "migrate", "--live", "-q", "--copy-storage", "full", "--bandwidth", "1",
                 lab.host_name(src), g["name"], lab.host_name(dst), background=True)
    try:
        # While the disk is mirrored no memory has moved yet: running is enough.
        m = wait_for_running_migration(lab_settings, min_processed=0)
    except TimeoutError:
        runner.kill()
        out, err = runner.communicate()
        raise AssertionError(f"the migration never ran: {err}") from None
    assert lab.local_image(dst, g["name"]).exists()  # pre-created, the copy under way
    proc = cli(lab_settings, "migration", "abort", str(m.id))
    assert proc.returncode == 0, proc.stderr
    _out, err = runner.communicate(timeout=180)
    assert runner.returncode == 1, err
    assert migration_row(lab_settings, m.id).status == "cancelled"
    assert defined_on(lab, g["uuid"]) == [lab.host_name(src)]
    assert not lab.local_image(dst, g["name"]).exists()
    assert lab.local_image(src, g["name"]).exists()
    assert ask(g["ip"], 10, "?") == "before-the-abort"


def _last_id(settings) -> int:
    return max(m.id for m in livemig.list_migrations(settings=settings))
