"""The lab comes up and goes down cleanly, twice, leaving nothing behind; and
`lab up` recovers a lab whose processes were killed without `lab down`."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from livemig import api
from livemig.lab.echo import ask
from livemig.lab.lab import Lab, LabConfig, _processes_mentioning

CFG = LabConfig(name="lmlife", root="/var/lib/livemig-lab-life", bridge="lmtbr1", subnet="10.79.0",
                port_base=16800, iscsi_port=13280, host_prefix="u")


def assert_nothing_left(settings):
    assert _processes_mentioning(CFG.root) == []
    assert _processes_mentioning(f"portal=127.0.0.1:{CFG.iscsi_port}") == []
    assert subprocess.run(["ip", "link", "show", CFG.bridge], capture_output=True).returncode != 0
    assert not Path(CFG.root).exists()
    assert [h.name for h in api.list_hosts(settings=settings) if h.name.startswith(CFG.host_prefix)] == []
    # No nwfilter rules left for tap devices that are gone.
    rules = subprocess.run(["ebtables", "-t", "nat", "-L"], capture_output=True, text=True).stdout
    devices = set(re.findall(r"\b(vnet\d+)\b", rules))
    assert [d for d in devices if not os.path.exists(f"/sys/class/net/{d}")] == []


@pytest.fixture
def life_settings(tmp_path):
    from livemig.config import Settings
    return Settings(data_dir=str(tmp_path / "data"), domain_type="qemu")


def test_up_down_twice_leaves_nothing(life_settings):
    lab = Lab(CFG)
    for _ in range(2):
        state = lab.up(hosts=2, guests=1, settings=life_settings)
        guest = state["guests"][0]
        assert ask(guest["ip"], 9)
        assert [h.name for h in api.list_hosts(settings=life_settings)] == ["u1", "u2"]
        assert [i.name for i in api.list_instances(settings=life_settings)] == ["vm1"]
        lab.down(settings=life_settings)
        assert_nothing_left(life_settings)


def test_up_recovers_from_a_killed_lab(life_settings):
    lab = Lab(CFG)
    state = lab.up(hosts=2, guests=1, settings=life_settings)
    # A crash: every lab process killed at once, nothing cleaned up.
    for pid in _processes_mentioning(CFG.root) + [state["tgtd_pid"]]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in _processes_mentioning("qemu-system"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if state["guests"][0]["uuid"].encode() in f.read():
                    os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError):
            pass
    time.sleep(0.5)
    assert Path(CFG.root, "lab.json").exists()  # stale state, pid files, bridge, definitions
    state = lab.up(hosts=2, guests=1, settings=life_settings)
    assert ask(state["guests"][0]["ip"], 9)
    lab.down(settings=life_settings)
    assert_nothing_left(life_settings)
