"""`livemig host drain` on the real lab (issue 14): three libvirt hosts, four
guests spread over them, a TCP echo stream kept open to every guest. Draining
the first host moves its guests elsewhere, one host per guest, without a lost
line; `host undrain --return` brings them back. Where each guest runs is
read with virsh on every host, independently of livemig."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time

import pytest

import livemig
from livemig.config import Settings
from livemig.lab.echo import EchoStream, ask
from livemig.lab.lab import Lab, LabConfig
from tests.integration.labtools import cli, console_problems

# Its own names, ports and subnet: it may be up beside the session's two-host lab.
DRAIN_LAB = LabConfig(name="lmdrain", root="/var/lib/livemig-lab-drain", bridge="lmtbr2", subnet="10.81.0",
                      port_base=17000, iscsi_port=13300, host_prefix="d")
HOSTS = 3
# Guest number -> the host it starts on: two on the host to drain.
HOMES = {1: 1, 2: 1, 3: 2, 4: 3}
# The whole allowed downtime from the start: QEMU switches over after its
# first pass. A TCG guest can come up corrupted after a migration of many
# iterations (NOTES.md), and a busy machine makes iterations many.
ONE_STEP = {"LIVEMIG_DOWNTIME_STEPS": "1"}


@pytest.fixture(scope="module")
def lab3_settings(tmp_path_factory) -> Settings:
    return Settings(data_dir=str(tmp_path_factory.mktemp("drainlabdata")), domain_type="qemu",
                    poll_interval_s=0.1)


@pytest.fixture(scope="module")
def lab3(lab3_settings):
    if os.geteuid() != 0:
        pytest.fail("the libvirt integration tests need root (they build a lab)")
    lab = Lab(DRAIN_LAB, say=print)
    try:
        state = lab.up(hosts=HOSTS, guests=0, settings=lab3_settings)
        for g, host_index in HOMES.items():
            lab.add_guest(state, g, host_index=host_index)
        livemig.sync_hosts(livemig.admin_context("tests"), settings=lab3_settings)
        yield lab
    finally:
        lab.down(settings=lab3_settings)
        livemig.close()


@pytest.fixture(scope="module")
def lab3_homes(lab3) -> dict[str, str]:
    return {f"vm{g}": lab3.host_name(i) for g, i in HOMES.items()}


def virsh_placement(lab) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per domain uuid: the hosts that run it, and the hosts that define it
    (running or not), asked of every host with virsh."""
    running: dict[str, list[str]] = {}
    defined: dict[str, list[str]] = {}
    for i in range(1, HOSTS + 1):
        for flag, found in (("--state-running", running), ("--all", defined)):
            listing = subprocess.run(["virsh", "-c", lab.host_uri(i), "list", flag, "--uuid"], check=True,
                                     capture_output=True, text=True, timeout=30).stdout
            for uuid in listing.split():
                found.setdefault(uuid, []).append(lab.host_name(i))
    return running, defined


def inventory(settings) -> dict[str, str]:
    """Instance name -> host, as `livemig instance list` reports it."""
    proc = cli(settings, "instance", "list", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return {i["name"]: i["host"] for i in json.loads(proc.stdout)}


def assert_placed(lab, settings, expected: dict[str, str]) -> None:
    """Every guest runs on exactly the expected host, is defined there only,
    and the inventory says so."""
    running, defined = virsh_placement(lab)
    for g in lab.state()["guests"]:
        assert running.get(g["uuid"]) == [expected[g["name"]]], (g["name"], running.get(g["uuid"]))
        assert defined.get(g["uuid"]) == [expected[g["name"]]], (g["name"], defined.get(g["uuid"]))
    assert inventory(settings) == expected


def test_drain_moves_every_guest_once_and_undrain_returns_them(lab3, lab3_settings, lab3_homes):
    settings = lab3_settings
    drained_host = lab3.host_name(1)
    guests = lab3.state()["guests"]
    drained = sorted(name for name, host in lab3_homes.items() if host == drained_host)
    assert_placed(lab3, settings, lab3_homes)
    boot_ids = {g["name"]: ask(g["ip"], 9) for g in guests}
    with contextlib.ExitStack() as stack:
        streams = {g["name"]: stack.enter_context(EchoStream(g["ip"], 7, period_s=0.05)) for g in guests}
        time.sleep(0.5)

        proc = cli(settings, "host", "drain", drained_host, "--yes", "--format", "json", env=ONE_STEP)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        drain = json.loads(proc.stdout)
        assert drain["status"] == "completed", drain
        moves = {m["instance_name"]: m for m in drain["moves"]}
        assert sorted(moves) == drained
        assert all(m["status"] == "completed" and m["dest_host"] != drained_host for m in moves.values()), moves
        after_drain = {**lab3_homes, **{name: m["dest_host"] for name, m in moves.items()}}
        assert drained_host not in after_drain.values()
        assert_placed(lab3, settings, after_drain)
        hosts = {h["name"]: h for h in json.loads(cli(settings, "host", "list", "--format", "json").stdout)}
        assert hosts[drained_host]["maintenance"]
        # One migration per drained guest: nothing moved twice, nothing else moved.
        migrations = json.loads(cli(settings, "migration", "list", "--format", "json").stdout)
        assert sorted(m["instance_name"] for m in migrations) == drained
        assert all(m["status"] == "completed" for m in migrations)

        proc = cli(settings, "host", "undrain", drained_host, "--return", "--yes", "--format", "json", env=ONE_STEP)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert_placed(lab3, settings, lab3_homes)
        hosts = {h["name"]: h for h in json.loads(cli(settings, "host", "list", "--format", "json").stdout)}
        assert not hosts[drained_host]["maintenance"]
        migrations = json.loads(cli(settings, "migration", "list", "--format", "json").stdout)
        assert sorted(m["instance_name"] for m in migrations) == sorted(drained * 2)
        for stream in streams.values():
            stream.settle()
    for name, stream in streams.items():
        assert stream.error is None, (name, stream.error)
        assert stream.in_order_without_loss and len(stream.received) == stream.sent > 50, name
    for g in guests:
        assert ask(g["ip"], 9) == boot_ids[g["name"]]
        assert console_problems(g) == []
