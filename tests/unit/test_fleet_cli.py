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

import pytest
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


# -- rebalance and consolidate -------------------------------------------------------------------------

def _loaded_fleet(tmp_path, settings, busy: dict[str, float], homes: dict[str, str]) -> Fleet:
    """Hosts a, b, c of 4 CPUs and 8 GiB; instance vmNN on `homes[vmNN]`,
    busy at `busy[vmNN]` cores; then sampled, as an operator would."""
    from livemig.drivers import load_profiles as lp

    counts = {h: sum(1 for home in homes.values() if home == h) for h in ("a", "b", "c")}
    fleet = Fleet.build(tmp_path, settings, sources=counts, dests={}, migration_seconds=0.2)
    with fleet.db().session() as s:
        for name in ("a", "b", "c"):
            fleet.driver.update_host(fleet.uri(name), vcpus=4, memory_mb=8192)
            s.get(Host, name).vcpus, s.get(Host, name).memory_mb = 4, 8192
    # Fleet.build numbers instances host by host, in the order of `counts`.
    for uuid, name in fleet.instances.items():
        fleet.driver.set_load(fleet.uri(homes[name]), uuid, cpu=lp.constant(busy.get(name, 0.0)))
    sampled = _cli(settings, "host", "sync", "--stats", "--settle", "0.3")
    assert sampled.returncode == 0, sampled.stderr
    return fleet


# a runs three busy instances, b one light one, c none.
BUSY = {"vm00": 0.9, "vm01": 0.9, "vm02": 0.9, "vm03": 0.2}
HOMES = {"vm00": "a", "vm01": "a", "vm02": "a", "vm03": "b"}


def _cpu_deviation(fleet: Fleet, placement: dict[str, str]) -> float:
    """The standard deviation of per-host CPU load (busy cores over 4) for `placement`."""
    import statistics

    return statistics.pstdev([sum(BUSY.get(vm, 0.0) for vm, h in placement.items() if h == host) / 4
                              for host in ("a", "b", "c")])


def test_rebalance_dry_run_shows_loads_moves_and_the_measure_and_changes_nothing(tmp_path, settings):
    fleet = _loaded_fleet(tmp_path, settings, BUSY, HOMES)
    before = _world(fleet)
    dry = _cli(settings, "rebalance", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    measure = next(line for line in lines if line.startswith("imbalance"))
    assert measure.startswith("imbalance (standard deviation of per-host CPU load): ")
    expected = _cpu_deviation(fleet, HOMES)
    assert f"{expected:.4f} before" in measure
    rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["a"], ["b"], ["c"])}
    # HOST INSTANCES(3 -> n) CPU_BEFORE CPU_AFTER ...: a's three 0.9-core instances on 4 CPUs.
    assert rows["a"][1:3] == ["3", "->"] and rows["a"][4] == "68%"
    assert lines[-1] == "dry run: nothing changed"
    assert _world(fleet) == before
    data = json.loads(_cli(settings, "rebalance", "--dry-run", "--format", "json").stdout)
    plan = data["plan"]
    assert data["id"] is None and data["status"] == "dry-run"
    assert plan["measure"] == "standard deviation of per-host CPU load"
    assert plan["figures"]["imbalance_before"] == pytest.approx(expected, abs=0.01)
    after = dict(HOMES, **{m["instance"]: m["dest"] for m in plan["moves"]})
    assert plan["moves"] and all(m["source"] == "a" for m in plan["moves"])
    assert plan["figures"]["imbalance_after"] == pytest.approx(_cpu_deviation(fleet, after), abs=0.01)
    assert plan["figures"]["imbalance_after"] < plan["figures"]["threshold"] < expected
    assert _world(fleet) == before


def test_rebalance_refuses_without_a_terminal_and_runs_the_plan_shown_with_yes(tmp_path, settings):
    fleet = _loaded_fleet(tmp_path, settings, BUSY, HOMES)
    before = _world(fleet)
    refused = _cli(settings, "rebalance")
    assert refused.returncode == 2
    assert _one_error_line(refused).startswith("livemig: error: rebalancing moves 2 instance(s): pass --yes")
    assert _world(fleet) == before
    planned = json.loads(_cli(settings, "rebalance", "--dry-run", "--format", "json").stdout)["plan"]["moves"]
    run = _cli(settings, "rebalance", "--yes", "--policy", "post-copy", "--parallel", "1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "operation 1: rebalance completed: 2 moved"
    expected = dict(HOMES, **{m["instance"]: m["dest"] for m in planned})
    assert where(fleet) == expected
    assert _cpu_deviation(fleet, expected) < _cpu_deviation(fleet, HOMES)
    migrations = fleet.migrations()
    assert [(m.instance_name, m.source_host, m.dest_host, m.status, m.policy) for m in migrations] == [
        (m["instance"], "a", m["dest"], "completed", "post-copy") for m in planned]
    # --parallel 1: the second move started only when the first had ended.
    assert migrations[1].created_at >= migrations[0].finished_at
    fleet.assert_invariants()
    # Now even: nothing to do is said, and exits 0 without recording anything.
    again = _cli(settings, "rebalance", "--yes")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1].startswith("no moves needed: the imbalance ")
    assert again.stdout.splitlines()[-1].endswith(" is below the threshold 0.05; nothing changed")
    with fleet.db().reading() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Operation)) == 1


def test_the_library_the_planner_and_the_command_share_one_min_gain_default(tmp_path, settings):
    """Two 0.1-core instances on a (16 CPUs), b empty: moving one lowers the
    deviation from 0.00625 to 0 (a gain of 0.00625): above the planner's
    minimum gain (0.0001), below the 0.01 the library had."""
    import livemig
    from livemig.load.fleet import build_fleet
    from livemig.drivers import load_profiles as lp
    from livemig.planning.rebalance import plan_rebalance
    from tests.drainfleet import CTX

    fleet = Fleet.build(tmp_path, settings, sources={"a": 2, "b": 0}, dests={}, migration_seconds=0.1)
    for uuid in fleet.instances:
        fleet.driver.set_load(fleet.uri("a"), uuid, cpu=lp.constant(0.1))
    assert _cli(settings, "host", "sync", "--stats", "--settle", "0.3").returncode == 0
    with fleet.db().reading() as s:
        planned = plan_rebalance(build_fleet(s, window_s=3600, settings=settings), threshold=0.001)
    assert len(planned.moves) == 1
    library = livemig.rebalance_fleet(CTX, threshold=0.001, dry_run=True, settings=settings)
    assert len(library.moves) == 1 and library.arguments["min_gain"] == 0.0001
    command = json.loads(_cli(settings, "rebalance", "--threshold", "0.001", "--dry-run", "--format", "json").stdout)
    assert len(command["moves"]) == 1 and command["arguments"]["min_gain"] == 0.0001


def test_consolidate_dry_run_reports_the_bound_the_solver_the_power_and_changes_nothing(tmp_path, settings):
    homes = {"vm00": "a", "vm01": "b", "vm02": "c"}
    fleet = _loaded_fleet(tmp_path, settings, {"vm00": 0.5, "vm01": 0.5, "vm02": 0.5}, homes)
    before = _world(fleet)
    dry = _cli(settings, "consolidate", "--by", "allocated", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == "consolidation plan: by allocation over 1h"
    assert lines[1] == "hosts used: 3 before, 1 after; lower bound 1 (the plan reaches it)"
    assert lines[2].startswith("solver: cp-sat, optimal")
    assert lines[3] == "moves: 2, 2048 MiB of memory to copy"
    emptied = sorted(set("abc") - {next(line.split()[0] for line in lines if line.split()[1:3] == ["1", "->"]
                                        and line.split()[3] == "3")})
    assert lines[4] == f"to standby: {', '.join(emptied)}"
    # By allocation each 1-vCPU instance counts as a whole core of 4: 3 x (100 + 150/4) W before,
    # one host at 3/4 after: 100 + 150 * 0.75.
    assert lines[5] == ("power (linear model, 100 W idle to 250 W at full CPU per powered host): 412 W before, "
                        "212 W after; saves 200 W, 4.8 kWh/day")
    assert _world(fleet) == before
    data = json.loads(_cli(settings, "consolidate", "--by", "allocated", "--dry-run", "--format", "json").stdout)
    assert data["plan"]["emptied"] == emptied and data["plan"]["method"] == "cp-sat" and data["plan"]["optimal"]
    assert data["plan"]["figures"]["kwh_per_day_saved"] == pytest.approx(4.8)
    assert data["plan"]["power_model"] == {"idle_watts": 100.0, "peak_watts": 250.0}
    assert _world(fleet) == before


def test_consolidate_moves_the_instances_and_puts_the_emptied_hosts_in_standby(tmp_path, settings):
    homes = {"vm00": "a", "vm01": "b", "vm02": "c"}
    fleet = _loaded_fleet(tmp_path, settings, {"vm00": 0.5, "vm01": 0.5, "vm02": 0.5}, homes)
    refused = _cli(settings, "consolidate")
    assert refused.returncode == 2 and _one_error_line(refused).startswith(
        "livemig: error: consolidating moves 2 instance(s) and puts ")
    plan = json.loads(_cli(settings, "consolidate", "--dry-run", "--format", "json").stdout)["plan"]
    run = _cli(settings, "consolidate", "--yes", "--format", "json")
    assert run.returncode == 0, run.stderr
    view = json.loads(run.stdout)
    assert view["status"] == "completed"
    used = set(where(fleet).values())
    assert len(used) == 1 and used.isdisjoint(plan["emptied"]) and len(plan["emptied"]) == 2
    for name in plan["emptied"]:
        assert _standby(fleet, name) == (True, f"emptied by consolidation (operation {view['id']})")
    listed = {line.split()[0]: line for line in _cli(settings, "host", "list").stdout.splitlines()[1:]}
    for name in plan["emptied"]:
        assert f"yes: emptied by consolidation (operation {view['id']})" in listed[name]
    fleet.assert_invariants()
    shown = _cli(settings, "operation", "show", str(view["id"])).stdout.splitlines()
    assert shown[0] == f"operation {view['id']}: consolidate completed"
    again = _cli(settings, "consolidate", "--yes")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == ("no moves needed: 1 host(s) in use, the lower bound is 1; "
                                             "nothing changed")


def test_bad_input_is_one_line_exit_2_and_records_nothing(tmp_path, settings):
    fleet = _loaded_fleet(tmp_path, settings, BUSY, HOMES)
    before = _world(fleet)
    cases = [
        (["rebalance", "--threshold", "-0.1"], "livemig: error: --threshold must be a number at least 0"),
        (["rebalance", "--threshold", "nan"], "livemig: error: --threshold must be a number at least 0"),
        (["rebalance", "--min-gain", "-1"], "livemig: error: --min-gain must be a number at least 0"),
        (["rebalance", "--max-moves", "-1"], "livemig: error: --max-moves must be a whole number at least 0"),
        (["rebalance", "--metric", "disk"], "livemig: error: Invalid value for '--metric'"),
        (["rebalance", "--policy", "nosuch"], "livemig: error: unknown migration policy"),
        (["rebalance", "--parallel", "0"], "livemig: error: --parallel must be at least 1"),
        (["rebalance", "--window", "0"], "livemig: error: Invalid value for '--window'"),
        (["rebalance", "--yes", "--no-wait"], "livemig: error: --no-wait needs ZooKeeper"),
        (["consolidate", "--headroom", "1"], "livemig: error: --headroom must be at least 0% and below 100%"),
        (["consolidate", "--headroom", "-5%"], "livemig: error: --headroom must be at least 0% and below 100%"),
        (["consolidate", "--headroom", "lots"], "livemig: error: Invalid value for '--headroom'"),
        (["consolidate", "--by", "guess"], "livemig: error: Invalid value for '--by'"),
        (["consolidate", "--max-moves", "-2"], "livemig: error: --max-moves must be a whole number at least 0"),
        (["consolidate", "--policy", "nosuch"], "livemig: error: unknown migration policy"),
        (["consolidate", "--parallel", "-1"], "livemig: error: --parallel must be at least 1"),
    ]
    for args, message in cases:
        # With --yes: refused before anything is planned or recorded, not after.
        proc = _cli(settings, *args, "--yes")
        assert proc.returncode == 2, (args, proc.stderr)
        assert _one_error_line(proc).startswith(message), (args, proc.stderr)
        assert _world(fleet) == before, args


def _cli_on_a_terminal(settings, *args: str, answer: str) -> subprocess.CompletedProcess:
    """The command with a terminal as stdin (a pseudo-terminal, `answer` typed ahead)."""
    import pty

    master, slave = pty.openpty()
    try:
        os.write(master, answer.encode() + b"\n")
        env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=ROOT, COLUMNS="200",
                   LIVEMIG_POLL_INTERVAL_S="0.02")
        env.pop("LIVEMIG_DATABASE_URL", None)
        return subprocess.run([sys.executable, "-m", "livemig.cli", *args], cwd=ROOT, env=env, stdin=slave,
                              capture_output=True, text=True, timeout=120)
    finally:
        os.close(slave)
        os.close(master)


def test_on_a_terminal_consolidate_asks_and_a_no_changes_nothing(tmp_path, settings):
    homes = {"vm00": "a", "vm01": "b", "vm02": "c"}
    fleet = _loaded_fleet(tmp_path, settings, {}, homes)
    before = _world(fleet)
    declined = _cli_on_a_terminal(settings, "consolidate", "--by", "allocated", answer="n")
    assert declined.returncode == 0, declined.stderr
    assert "to standby: " in declined.stdout
    # The answer typed ahead is echoed to the terminal, not to stdout: the reply follows the question.
    question = declined.stdout.splitlines()[-1]
    assert question.startswith("consolidating moves 2 instance(s) and puts ")
    assert question.endswith(" in standby? [y/N]: nothing changed")
    assert _world(fleet) == before
    accepted = _cli_on_a_terminal(settings, "consolidate", "--by", "allocated", answer="y")
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.splitlines()[-1].startswith("operation 1: consolidate completed: 2 moved; in standby: ")
    assert len(set(where(fleet).values())) == 1


def test_the_load_bars_scale_to_a_full_host_and_mark_an_overloaded_one():
    from livemig.cli.fleet import load_bars

    hosts = [{"name": "h1", "cpu_before": 1.2, "cpu_after": 0.5, "memory_before": 0.0, "memory_after": 0.5},
             {"name": "host2", "cpu_before": 0.0, "cpu_after": 0.75, "memory_before": 1.0, "memory_after": 0.25}]
    header, h1, h2 = load_bars(hosts, "cpu", width=10)
    assert header.split() == ["cpu", "load", "before", "after"]
    assert h1 == "h1        ██████████! 120%  █████        50%"
    assert h2 == "host2                   0%  ███████▌     75%"
    # --metric both: the mean of CPU and memory load.
    assert load_bars(hosts, "both", width=10)[2] == "host2      █████        50%  █████        50%"
