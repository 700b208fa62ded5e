"""The fleet command line on the fake driver: `livemig rebalance`,
`livemig consolidate`, `host wake`, and the STANDBY column of `host list`
and `host show`. Each command runs in a subprocess as an operator runs it
(no terminal: stdin is not a tty), and the tests look at the world after
it: where the VMs run, what the inventory says, what was recorded."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import sqlalchemy as sa

from livemig.persistence.models import Host, Migration, Operation
from tests.drainfleet import Fleet
from tests.planned_fleet import where

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(settings, *args: str, stdin: str | None = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=ROOT, COLUMNS="200",
               LIVEMIG_POLL_INTERVAL_S="0.02")
    env.pop("LIVEMIG_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "livemig.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, input=stdin)


def _world(fleet: Fleet) -> tuple:
    """What a refused command must leave as it was."""
    with fleet.db().reading() as s:
        return (fleet.inventory_hosts(), s.scalar(sa.select(sa.func.count()).select_from(Operation)),
                s.scalar(sa.select(sa.func.count()).select_from(Migration)),
                [(h.name, h.maintenance, h.standby, h.standby_reason)
                 for h in s.scalars(sa.select(Host).order_by(Host.name))])


def _put_in_standby(fleet: Fleet, name: str, reason: str) -> None:
    from livemig.persistence.models import utcnow

    with fleet.db().session() as s:
        host = s.get(Host, name)
        host.standby, host.standby_reason, host.standby_since = True, reason, utcnow()


def _standby(fleet: Fleet, name: str) -> tuple[bool, str | None]:
    with fleet.db().reading() as s:
        host = s.get(Host, name)
        return bool(host.standby), host.standby_reason


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_host_list_and_show_say_which_hosts_are_in_standby_and_why(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, sources={"a": 1, "b": 0}, dests={})
    _put_in_standby(fleet, "b", "emptied by consolidation (operation 7)")
    listed = _cli(settings, "host", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert "STANDBY" in header.split()
    row = {line.split()[0]: line for line in rows}
    assert "yes: emptied by consolidation (operation 7)" in row["b"]
    assert "yes:" not in row["a"]
    shown = _cli(settings, "host", "show", "b")
    assert shown.returncode == 0, shown.stderr
    # "label   value" per line; a field with no value is the label alone.
    fields = {(line.split(None, 1) + [""])[0]: (line.split(None, 1) + [""])[1].strip()
              for line in shown.stdout.splitlines()}
    assert fields["standby"] == "yes: emptied by consolidation (operation 7)"
    assert fields["standby_since"].endswith("Z")
    data = json.loads(_cli(settings, "host", "show", "a", "--format", "json").stdout)
    assert data["name"] == "a" and data["standby"] is False and data["standby_reason"] is None


def test_host_wake_brings_a_standby_host_back_into_placement(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, sources={"a": 1, "b": 0}, dests={})
    _put_in_standby(fleet, "b", "emptied by consolidation (operation 7)")
    # In standby, b takes nothing: the only other host, so vm00 has nowhere to go.
    refused = _cli(settings, "migrate", "--live", "vm00")
    assert refused.returncode != 0 and "b: standby" in refused.stderr, refused.stderr
    woken = _cli(settings, "host", "wake", "b")
    assert woken.returncode == 0, woken.stderr
    assert woken.stdout.strip() == "host b woken: it takes placements again"
    assert _standby(fleet, "b") == (False, None)
    moved = _cli(settings, "migrate", "--live", "vm00")
    assert moved.returncode == 0, moved.stderr
    assert where(fleet) == {"vm00": "b"}


def test_host_wake_refuses_an_unknown_host_and_one_not_in_standby(tmp_path, settings):
    fleet = Fleet.build(tmp_path, settings, sources={"a": 1, "b": 0}, dests={})
    _put_in_standby(fleet, "b", "emptied by consolidation (operation 7)")
    before = _world(fleet)
    for name, message in [("nosuch", "livemig: error: host 'nosuch' is not in the inventory"),
                          ("a", "livemig: error: host a is not in standby")]:
        proc = _cli(settings, "host", "wake", name)
        assert proc.returncode == 2, (name, proc.stderr)
        assert _one_error_line(proc).startswith(message)
        assert _world(fleet) == before
