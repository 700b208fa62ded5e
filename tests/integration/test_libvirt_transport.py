"""Issue 16's transport options between the lab's real libvirt hosts: the
migration network."""
from __future__ import annotations

import subprocess
import time

from livemig import api
from livemig.context import admin_context
from livemig.lab.echo import ask
from tests.integration.labtools import active_on, cli, guest, other, wait_for_running_migration, where

CTX = admin_context("tests")


def established_to(address: str) -> list[tuple[str, int]]:
    """(peer address, port) of the established TCP connections to ADDRESS."""
    lines = subprocess.run(["ss", "-Htn", "state", "established", "dst", address], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    peers = []
    for line in lines:
        peer = line.split()[-1]
        host, _, port = peer.rpartition(":")
        peers.append((host, int(port)))
    return peers


def test_the_stream_goes_to_the_destinations_migration_address(lab, lab_settings):
    """The lab's hosts listen for migrations on their bridge address by
    default (qemu.conf); given 127.0.0.1 as the destination's migration
    address, the source QEMU connects there instead."""
    g = guest(lab)
    src = where(lab, lab_settings)
    dst = other(lab, src)
    dst_index = int(dst[len(lab.cfg.host_prefix):])
    boot_id = ask(g["ip"], 9)
    api.set_host_migration_network(CTX, dst, "127.0.0.1", settings=lab_settings)
    try:
        runner = cli(lab_settings, "migrate", "--live", "-q", "--bandwidth", "8", src, g["name"], dst,
                     background=True)
        wait_for_running_migration(lab_settings)
        # The destination QEMU's incoming port: one from the destination's
        # migration range, connected to on loopback.
        low = 49200 + (dst_index - 1) * 50 + (lab.cfg.port_base % 1000)
        seen: list[tuple[str, int]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen:
            seen = [p for p in established_to("127.0.0.1") if low <= p[1] <= low + 49]
            time.sleep(0.1)
        out, err = runner.communicate(timeout=240)
        assert runner.returncode == 0, err
        assert seen, "no connection to the destination's migration port on 127.0.0.1 during the migration"
        # Not over the bridge address the hosts' qemu.conf would have used.
        assert active_on(lab, g["uuid"]) == [dst]
        assert ask(g["ip"], 9) == boot_id
    finally:
        api.set_host_migration_network(CTX, dst, lab.migration_ip(dst_index), settings=lab_settings)


def test_multifd_and_compression_migrations_complete(lab, lab_settings):
    """--parallel 2 (multifd) and --compression mt (multi-threaded) each
    complete a round trip, the guest intact. (What they cost and when they
    help: README, from NOTES: on 2 cores mt compression is CPU-bound.)"""
    g = guest(lab)
    boot_id = ask(g["ip"], 9)
    for flags in (["--parallel", "2"], ["--compression", "mt"], ["--compression", "xbzrle"]):
        src = where(lab, lab_settings)
        dst = other(lab, src)
        proc = cli(lab_settings, "migrate", "--live", *flags, src, g["name"], dst)
        assert proc.returncode == 0, (flags, proc.stderr)
        assert active_on(lab, g["uuid"]) == [dst], flags
        assert ask(g["ip"], 9) == boot_id
