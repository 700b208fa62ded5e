"""The command line as an operator uses it: real processes, exit codes, one
line on stderr for bad input, and nothing changed by a refused command."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from livemig.persistence.database import database_for
from livemig.persistence.models import Event, Host, Instance, Migration, Reservation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(settings, *args, user=None, stdin=None):
    env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=ROOT, COLUMNS="200")
    env.pop("LIVEMIG_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "livemig.cli", *args]
    if user:
        env["HOME"] = "/tmp"
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, input=stdin)


def snapshot(settings):
    with database_for(settings.database_url).session() as s:
        return {
            "hosts": [(h.name, h.uri, h.enabled) for h in s.scalars(sa.select(Host).order_by(Host.name))],
            "instances": [(i.uuid, i.host, i.state) for i in s.scalars(sa.select(Instance).order_by(Instance.uuid))],
            "migrations": s.scalar(sa.select(sa.func.count()).select_from(Migration)),
            "events": s.scalar(sa.select(sa.func.count()).select_from(Event)),
            "reservations": s.scalar(sa.select(sa.func.count()).select_from(Reservation)),
        }


BAD_INPUT = [
    ("unknown instance", ["migrate", "--live", "a", "nope", "b"], 3, "instance 'nope' is not in the inventory"),
    ("unknown source", ["migrate", "--live", "zz", "vm1", "b"], 3, "host 'zz' is not in the inventory"),
    ("a host given as the instance", ["migrate", "--live", "a"], 3,
     "'a' is a host, not an instance; to move every instance off it: livemig host drain a"),
    ("unknown destination", ["migrate", "--live", "a", "vm1", "zz"], 3, "host 'zz' is not in the inventory"),
    ("source equals destination", ["migrate", "--live", "a", "vm1", "a"], 2, "same host"),
    ("instance not on source", ["migrate", "--live", "b", "vm1", "c"], 4, "runs on a, not on b"),
    ("no --live", ["migrate", "a", "vm1", "b"], 2, "pass --live"),
    ("malformed host URI", ["host", "add", "d", "--uri", "http://nowhere"], 2, "malformed host URI"),
    ("duplicate host", ["host", "add", "a", "--uri", "fake:///tmp/x/a.json"], 4, "already exists"),
    ("unknown migration", ["migration", "show", "999"], 3, "migration 999 does not exist"),
    ("resume unknown migration", ["migration", "resume", "999"], 3, "migration 999 does not exist"),
    ("unknown host resources", ["resources", "zz"], 3, "host 'zz' is not in the inventory"),
    ("unknown option", ["migrate", "--bogus"], 2, "No such option '--bogus'"),
    ("two arguments", ["migrate", "--live", "a", "vm1"], 2, "migrate takes INSTANCE or SRC INSTANCE DST, not 2"),
    ("out-of-range option", ["host", "add", "d", "--uri", "fake:///tmp/x/d.json", "--max-migrations", "0"], 2,
     "0 is not in the range 1<=x<=1024"),
    ("unknown command", ["migrat"], 2, "No such command 'migrat'"),
    ("bad resources window", ["resources", "--window", "soon"], 2, "'soon' is not a duration"),
    ("zero resources window", ["resources", "--window", "0m"], 2, "'0m' is not a positive duration"),
    ("unknown host to sample", ["host", "sync", "zz", "--stats"], 3, "host 'zz' is not in the inventory"),
    ("bad settle time", ["host", "sync", "--stats", "--settle", "0"], 2, "0.0 is not in the range 0.1<=x<=600.0"),
]


@pytest.mark.parametrize("case,args,code,message", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_one_line_exit_code_nothing_changed(cloud, case, args, code, message):
    before = snapshot(cloud.settings)
    proc = run(cloud.settings, *args)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith("livemig: error: ")
    assert snapshot(cloud.settings) == before
    assert cloud.running_on() == ["a"]


def test_disabled_unreachable_full_and_incompatible_destinations_refused(cloud):
    before = snapshot(cloud.settings)
    assert run(cloud.settings, "host", "disable", "b", "--reason", "maintenance").returncode == 0
    proc = run(cloud.settings, "migrate", "--live", "a", "vm1", "b")
    assert proc.returncode == 4 and "host b is disabled (maintenance)" in proc.stderr
    run(cloud.settings, "host", "enable", "b")
    cloud.driver.update_host(cloud.uri("b"), reachable=False)
    proc = run(cloud.settings, "migrate", "--live", "a", "vm1", "b")
    assert proc.returncode == 6 and "host b is unreachable" in proc.stderr
    cloud.driver.update_host(cloud.uri("b"), reachable=True, memory_mb=100)
    proc = run(cloud.settings, "migrate", "--live", "a", "vm1", "b")
    assert proc.returncode == 4 and "not enough room" in proc.stderr
    cloud.driver.update_host(cloud.uri("b"), memory_mb=32768, cpu_models=["486"])
    proc = run(cloud.settings, "migrate", "--live", "a", "vm1", "b")
    assert proc.returncode == 4 and "cannot run the CPU" in proc.stderr
    after = snapshot(cloud.settings)
    assert after["instances"] == before["instances"] and after["migrations"] == 0
    assert cloud.running_on() == ["a"]


def test_unreachable_database(settings):
    env_url = "postgresql://nobody@127.0.0.1:1/none"
    proc = run(settings, "--db-url", env_url, "instance", "list")
    assert proc.returncode == 6
    assert proc.stderr.strip().count("\n") == 0 and "is unreachable" in proc.stderr


def run_as_nobody(settings, *args, home=None):
    """The CLI as uid/gid 65534 with no supplementary groups, in a forked
    child of this process: the interpreter and livemig are already loaded,
    so the test does not depend on whether that user may enter the
    directories they live in (a venv under root's home, say)."""
    import tempfile

    import livemig.cli.main
    from livemig.persistence.database import close_all

    close_all()  # the child opens its own connections, with its own rights
    env = {"LIVEMIG_DATA_DIR": settings.data_dir, "HOME": home or "/nonexistent", "COLUMNS": "200"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child always leaves by os._exit
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
                import logging
                for handler in list(logging.getLogger().handlers):
                    logging.getLogger().removeHandler(handler)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                os.environ.pop("LIVEMIG_DATABASE_URL", None)
                os.environ.pop("XDG_DATA_HOME", None)
                os.environ.update(env)
                os.chdir("/")
                sys.argv = ["livemig", *args]
                livemig.cli.main.main()
            finally:
                os._exit(99)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), out.read(), err.read())


def test_non_admin_is_refused_and_nothing_changes(cloud):
    # The database stays as livemig created it (private); a refusal is about
    # roles, decided before any file is opened.
    before = snapshot(cloud.settings)
    proc = run_as_nobody(cloud.settings, "migrate", "--live", "a", "vm1", "b")
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "livemig: error: live migration is an administrator's operation; user nobody is not an administrator"]
    proc = run_as_nobody(cloud.settings, "host", "disable", "b")
    assert proc.returncode == 5, proc.stderr
    assert snapshot(cloud.settings) == before and cloud.running_on() == ["a"]
    # Reading a private database is refused by its permissions, in one line.
    proc = run_as_nobody(cloud.settings, "instance", "list")
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_refused_non_admin_creates_no_database_in_its_home(cloud, tmp_path):
    home = tmp_path / "home-nobody"
    home.mkdir()
    os.chown(home, 65534, 65534)
    settings = cloud.settings.replace(data_dir=str(home / ".local" / "share" / "livemig"), database_url="")
    proc = run_as_nobody(settings, "migrate", "--live", "a", "vm1", "b", home=str(home))
    assert proc.returncode == 5, proc.stderr
    assert list(home.rglob("*")) == []


def test_migrate_then_list_show_resources_in_tables_and_json(cloud):
    proc = run(cloud.settings, "migrate", "--live", "a", "vm1", "b")
    assert proc.returncode == 0, proc.stderr
    assert "vm1 a -> b completed" in proc.stdout
    listed = json.loads(run(cloud.settings, "migration", "list", "--format", "json").stdout)
    assert [(m["instance_name"], m["source_host"], m["dest_host"], m["status"]) for m in listed] == [
        ("vm1", "a", "b", "completed")]
    shown = json.loads(run(cloud.settings, "migration", "show", str(listed[0]["id"]), "--format", "json").stdout)
    assert [e["name"] for e in shown["events"] if e["kind"] == "step" and e["state"] == "SUCCESS"][-1] == \
        "mark-migration-completed"
    instances = json.loads(run(cloud.settings, "instance", "list", "--format", "json").stdout)
    assert [(i["name"], i["host"], i["state"]) for i in instances] == [("vm1", "b", "running")]
    table = run(cloud.settings, "resources", "b").stdout.splitlines()
    # The allocated columns first; the measured ones (empty: never sampled) follow.
    assert table[0].split()[:6] == ["KIND", "HOST", "PROJECT", "VCPUS", "MEMORY_MB", "DISK_GB"]
    assert table[1].split() == ["TOTAL", "b", "16", "32768", "500"]
    assert table[3].split() == ["NODE", "b", "p1", "1", "256", "1"]
    text = run(cloud.settings, "migration", "show", str(listed[0]["id"])).stdout
    assert "completed" in text and "migrate-domain" in text


def test_quiet_migrate_prints_its_result_only_and_status_lines_otherwise(cloud):
    quiet = run(cloud.settings, "migrate", "--live", "-q", "a", "vm1", "b")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and len(quiet.stdout.splitlines()) == 1
    assert quiet.stdout.startswith("migration 1: vm1 a -> b completed in ")
    # Not a terminal: one line per status change on stderr, the result on stdout.
    plain = run(cloud.settings, "migrate", "--live", "b", "vm1", "a")
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.splitlines()[-1] == "migration 2: completed"
    assert plain.stdout.startswith("migration 2: vm1 b -> a completed in ")


def test_migration_failure_exit_code_and_reason(cloud):
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "dest-died", "b's libvirtd went away")
    proc = run(cloud.settings, "migrate", "--live", "a", "vm1", "b")
    assert proc.returncode == 1
    assert "failed" in proc.stderr and "client socket is closed" in proc.stderr
    assert cloud.running_on() == ["a"]


def test_credential_add_reads_stdin_and_is_private(cloud):
    from livemig.credentials import registered_credential
    from livemig.persistence.models import Credential
    from livemig.services import services_for

    proc = run(cloud.settings, "credential", "add", "vol-9", stdin="pa55word\n")
    assert proc.returncode == 0
    # In the database, encrypted with the key file made (private) on first use.
    with database_for(cloud.settings.database_url).session() as s:
        assert b"pa55word" not in s.get(Credential, "vol-9").ciphertext
    assert oct(os.stat(cloud.settings.credential_key_file).st_mode & 0o777) == "0o600"
    assert registered_credential(services_for(cloud.settings), "vol-9") == b"pa55word"
    assert not os.path.exists(os.path.join(cloud.settings.data_dir, "credentials"))
    assert "pa55word" not in proc.stdout + proc.stderr


def test_no_queue_fails_at_once_when_a_host_is_busy(cloud):
    from livemig.coordination.base import HostLimit
    from livemig.services import services_for
    # Another migration holds host b.
    services_for(cloud.settings).reservations.try_reserve(999, "someone-else", [HostLimit("b", 1)])
    proc = run(cloud.settings, "migrate", "--live", "--no-queue", "a", "vm1", "b")
    assert proc.returncode == 1
    assert "host b is in 1 migration(s), its limit is 1" in proc.stderr
    assert cloud.running_on() == ["a"] and cloud.instance().state == "running"
    assert cloud.last_migration().status == "failed"


def test_no_wait_without_zookeeper_is_refused_and_records_nothing(cloud):
    # Without conductors nothing would run a migration once the command returns.
    before = snapshot(cloud.settings)
    proc = run(cloud.settings, "migrate", "--live", "--no-wait", "a", "vm1", "b")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--no-wait needs ZooKeeper" in lines[0], proc.stderr
    assert snapshot(cloud.settings) == before and cloud.running_on() == ["a"]


def test_failed_migration_prints_its_reason_once(cloud):
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "dest-died", "b's libvirtd went away")
    proc = run(cloud.settings, "migrate", "--live", "a", "vm1", "b")
    assert proc.returncode == 1
    assert proc.stderr.count("b's libvirtd went away") == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("livemig: error: migration 1 failed: ")
    assert cloud.running_on() == ["a"]


def test_markup_in_names_and_reasons_is_printed_literally(cloud):
    vm = cloud.driver.create_domain(cloud.uri("c"), "web[/x][bold]", memory_mb=256)
    assert run(cloud.settings, "host", "sync", "c").returncode == 0
    cloud.driver.inject_fault(cloud.uri("c"), "migrate", "error", "disk [/x] is [red]gone")
    proc = run(cloud.settings, "migrate", "--live", "c", vm, "b")
    assert proc.returncode == 1 and "disk [/x] is [red]gone" in proc.stderr
    migration_id = cloud.last_migration().id
    shown = run(cloud.settings, "migration", "show", str(migration_id))
    assert shown.returncode == 0, shown.stderr
    assert "web[/x][bold]" in shown.stdout and "disk [/x] is [red]gone" in shown.stdout
    listed = run(cloud.settings, "migration", "list")
    assert listed.returncode == 0, listed.stderr
    assert "web[/x][bold]" in listed.stdout and "disk [/x] is [red]gone" in listed.stdout
    assert run(cloud.settings, "instance", "list").stdout.count("web[/x][bold]") == 1
    assert cloud.running_on(vm) == ["c"]


HOSTILE_NUMBERS = [
    ("host", "add", "d", "--max-migrations", "0"),
    ("host", "add", "d", "--max-migrations", "1025"),
    ("host", "add", "d", "--max-migrations", "99999999999999999999"),
    ("host", "add", "d", "--cpu-ratio", "nan"),
    ("host", "add", "d", "--ram-ratio", "inf"),
    ("host", "add", "d", "--disk-ratio", "1e400"),
    ("host", "add", "d", "--cpu-ratio", "0.01"),
    ("host", "add", "d", "--ram-ratio", "1001"),
    ("migration", "show", "0"),
    ("migration", "show", "--", "-3"),
    ("migration", "abort", "99999999999999999999"),
    ("migration", "resume", "2147483648"),
    ("migration", "list", "--limit", "1000001"),
    ("reconcile", "--grace", "nan"),
    ("reconcile", "--grace", "inf"),
    ("reconcile", "--grace=-1"),
]


@pytest.mark.parametrize("args", HOSTILE_NUMBERS, ids=[" ".join(a) for a in HOSTILE_NUMBERS])
def test_hostile_numbers_are_one_line_exit_2_and_change_nothing(cloud, args):
    # Host d answers: only the bound stands between the command and a new row.
    cloud.driver.create_host(cloud.uri("d"))
    if args[:2] == ("host", "add"):
        args = (*args, "--uri", cloud.uri("d"))
    before = snapshot(cloud.settings)
    proc = run(cloud.settings, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("livemig: error: "), proc.stderr
    assert snapshot(cloud.settings) == before


def test_the_library_refuses_the_same_numbers(cloud):
    import livemig
    from livemig.errors import InvalidInput, MigrationNotFound

    ctx = livemig.admin_context("tests")
    cloud.driver.create_host(cloud.uri("d"))
    before = snapshot(cloud.settings)
    for bad in ({"max_concurrent_migrations": 5000}, {"max_concurrent_migrations": True},
                {"cpu_allocation_ratio": float("nan")}, {"ram_allocation_ratio": float("inf")},
                {"disk_allocation_ratio": 0.0}):
        with pytest.raises(InvalidInput):
            livemig.add_host(ctx, "d", cloud.uri("d"), settings=cloud.settings, **bad)
    with pytest.raises(InvalidInput):
        livemig.list_migrations(limit=10**7, settings=cloud.settings)
    for grace in (float("nan"), float("inf"), -1.0):
        with pytest.raises(InvalidInput):
            livemig.reconcile(ctx, grace_s=grace, settings=cloud.settings)
    for mid in (0, -1, 2**70):
        with pytest.raises(MigrationNotFound):
            livemig.show_migration(mid, settings=cloud.settings)
    assert snapshot(cloud.settings) == before
