"""The lab (root only) cannot damage the machine: it removes, and kills
processes by, only a root it created; its package cache is not writable by
others; a CHAP password never appears in its messages. None of these start a
lab: the refusals come before any bridge or daemon."""
from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from livemig.lab.guest_image import download_dir, secure_cache
from livemig.lab.lab import ROOT_MARKER, Lab, LabConfig, LabError


def lab_at(root) -> Lab:
    # Names and ports no real lab uses, so nothing here can meet one.
    return Lab(LabConfig(name="lmsafety", root=str(root), cache=str(root) + "-cache", bridge="lmsafebr9",
                         subnet="10.79.9", port_base=16990, iscsi_port=13999))


@pytest.fixture
def foreign_dir(tmp_path):
    """A directory the lab did not create, with a process that names it."""
    root = tmp_path / "system-dir"
    root.mkdir()
    (root / "precious").write_text("keep me")
    proc = subprocess.Popen(["sh", "-c", "sleep 60", f"{root}/x"])
    yield root, proc
    proc.kill()
    proc.wait()


def test_up_and_down_refuse_a_root_the_lab_did_not_create(foreign_dir):
    root, proc = foreign_dir
    lab = lab_at(root)
    for action in (lab.down, lambda: lab.up(hosts=2, guests=0)):
        with pytest.raises(LabError, match=f"no {ROOT_MARKER}"):
            action()
    time.sleep(0.1)
    assert proc.poll() is None  # not killed
    assert (root / "precious").read_text() == "keep me" and sorted(os.listdir(root)) == ["precious"]


def test_down_removes_a_root_the_lab_created(tmp_path):
    root = tmp_path / "lab-root"
    lab = lab_at(root)
    lab._save({"hosts": [], "guests": []})
    assert (root / ROOT_MARKER).is_file() and stat.S_IMODE(os.stat(root).st_mode) == 0o700
    lab.down()
    assert not root.exists()


def test_package_cache_is_not_writable_by_others_and_drops_planted_files(tmp_path):
    cache = tmp_path / "cache"
    debs = cache / "debs"
    debs.mkdir(parents=True)
    os.chmod(debs, 0o777)  # as earlier versions left it
    (debs / "kernel.deb").write_bytes(b"root's")
    planted = debs / "evil.deb"
    planted.write_bytes(b"someone else's")
    os.chown(planted, 65534, 65534)
    assert download_dir(cache) == debs
    assert sorted(os.listdir(debs)) == ["kernel.deb"]
    for directory in (cache, debs):
        assert not os.stat(directory).st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    secure_cache(cache)  # idempotent on a tight cache
    assert sorted(os.listdir(debs)) == ["kernel.deb"]


def test_chap_password_is_kept_out_of_error_messages(tmp_path):
    lab = lab_at(tmp_path / "lab-root")  # no tgtd behind its socket: tgtadm fails
    with pytest.raises(LabError) as failed:
        lab._tgtadm("--op", "new", "--mode", "account", "--user", "u-g1", "--password", "chap-5ecret-42")
    assert "chap-5ecret-42" not in str(failed.value) and "--password ***" in str(failed.value)
