"""`livemig host drain` on the real lab (issue 14): three libvirt hosts, four
guests spread over them, a TCP echo stream kept open to every guest. Draining
the first host moves its guests elsewhere, one host per guest, without a lost
line; `host undrain --return` brings them back. Where each guest runs is
read with virsh on every host, independently of livemig."""
from __future__ import annotations

import contextlib
import json
import time

from livemig.lab.echo import EchoStream, ask
from tests.integration.labtools import assert_placed, cli, console_problems

# The CLI's setting for lab3_settings' downtime_steps=1 (see conftest.py).
ONE_STEP = {"LIVEMIG_DOWNTIME_STEPS": "1"}


def migrations_after(settings, last_id: int) -> list[dict]:
    """The migrations recorded after migration `last_id` (newest first)."""
    return [m for m in json.loads(cli(settings, "migration", "list", "--format", "json").stdout)
            if m["id"] > last_id]


def test_drain_moves_every_guest_once_and_undrain_returns_them(lab3, lab3_settings, lab3_homes,
                                                               lab3_hosts_restored):
    settings = lab3_settings
    # The lab is the session's: earlier tests' migrations are not this one's.
    last_earlier = max((m["id"] for m in migrations_after(settings, 0)), default=0)
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
        migrations = migrations_after(settings, last_earlier)
        assert sorted(m["instance_name"] for m in migrations) == drained
        assert all(m["status"] == "completed" for m in migrations)

        proc = cli(settings, "host", "undrain", drained_host, "--return", "--yes", "--format", "json", env=ONE_STEP)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert_placed(lab3, settings, lab3_homes)
        hosts = {h["name"]: h for h in json.loads(cli(settings, "host", "list", "--format", "json").stdout)}
        assert not hosts[drained_host]["maintenance"]
        migrations = migrations_after(settings, last_earlier)
        assert sorted(m["instance_name"] for m in migrations) == sorted(drained * 2)
        for stream in streams.values():
            stream.settle()
    for name, stream in streams.items():
        assert stream.error is None, (name, stream.error)
        assert stream.in_order_without_loss and len(stream.received) == stream.sent > 50, name
    for g in guests:
        assert ask(g["ip"], 9) == boot_ids[g["name"]]
        assert console_problems(g) == []
