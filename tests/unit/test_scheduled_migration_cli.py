"""`livemig migrate` as an operator types it: the three forms, --dry-run in
text and JSON (changing nothing), and the refusal of every host."""
from __future__ import annotations

import json

import pytest

import livemig
from tests.unit.test_cli import run, snapshot

CTX = livemig.admin_context("tests")


@pytest.fixture
def fleet(cloud):
    """vm1 on a; c has less free memory than b; no host but a has the filter."""
    cloud.driver.create_domain(cloud.uri("c"), "busy", memory_mb=8192)
    livemig.sync_hosts(CTX, settings=cloud.settings)
    return cloud


def test_dry_run_shows_the_choice_and_every_refusal_and_changes_nothing(fleet):
    fleet.driver.update_host(fleet.uri("c"), bridges=["br-other"])
    livemig.sync_hosts(CTX, settings=fleet.settings)
    before = snapshot(fleet.settings)
    proc = run(fleet.settings, "migrate", "--live", "vm1", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "vm1: a -> b (dry run, weigher spread; nothing changed)",
        "  a: source-host: vm1 runs there",
        "  c: networks: lacks br-guests",
    ]
    proc = run(fleet.settings, "migrate", "--live", "vm1", "--dry-run", "--format", "json")
    data = json.loads(proc.stdout)
    assert (data["chosen"], data["ranked"], data["source"], data["weigher"]) == ("b", ["b"], "a", "spread")
    assert data["refusals"] == [{"host": "a", "filter": "source-host", "reason": "vm1 runs there"},
                                {"host": "c", "filter": "networks", "reason": "lacks br-guests"}]
    assert snapshot(fleet.settings) == before


def test_dry_run_with_no_host_lists_why_and_fails(fleet):
    for host in ("b", "c"):
        fleet.driver.update_host(fleet.uri(host), memory_mb=128)
    livemig.sync_hosts(CTX, settings=fleet.settings)
    proc = run(fleet.settings, "migrate", "--live", "vm1", "--dry-run")
    assert proc.returncode == 4
    assert "  b: memory: needs 256 MB, 128 free" in proc.stdout.splitlines()
    assert proc.stderr.strip() == ("livemig: error: no host can take vm1: a: source-host: vm1 runs there; "
                                   "b: memory: needs 256 MB, 128 free; c: memory: needs 256 MB, 0 free")
    # The real request says the same, and records nothing.
    before = snapshot(fleet.settings)
    proc = run(fleet.settings, "migrate", "--live", "vm1")
    assert proc.returncode == 4 and "no valid host" not in proc.stderr.lower()
    assert "b: memory: needs 256 MB, 128 free" in proc.stderr
    assert snapshot(fleet.settings) == before


def test_the_chosen_destination_form_migrates_to_the_spread_best(fleet):
    proc = run(fleet.settings, "migrate", "--live", "vm1", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("migration 1: vm1 a -> b completed")
    assert fleet.running_on() == ["b"]
    shown = run(fleet.settings, "migration", "show", "1")
    assert "attempt 1            b completed" in shown.stdout


def test_to_names_the_destination(fleet):
    proc = run(fleet.settings, "migrate", "--live", "vm1", "--to", "c", "-q", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    assert (view["dest_host"], view["scheduled"], view["status"]) == ("c", False, "completed")
    assert fleet.running_on() == ["c"]


def test_the_original_form_still_works_and_checks_its_source(fleet):
    before = snapshot(fleet.settings)
    bad = run(fleet.settings, "migrate", "--live", "b", "vm1", "c")
    assert bad.returncode == 4 and bad.stderr.strip() == "livemig: error: instance vm1 runs on a, not on b"
    assert snapshot(fleet.settings) == before
    proc = run(fleet.settings, "migrate", "--live", "a", "vm1", "c", "-q")
    assert proc.returncode == 0, proc.stderr
    assert fleet.running_on() == ["c"]


@pytest.mark.parametrize("args,message", [
    (["migrate", "--live"], "migrate takes INSTANCE or SRC INSTANCE DST, not no arguments"),
    (["migrate", "--live", "a", "vm1"], "migrate takes INSTANCE or SRC INSTANCE DST, not 2 arguments"),
    (["migrate", "--live", "a", "vm1", "b", "c"], "not 4 arguments"),
    (["migrate", "--live", "a", "vm1", "b", "--to", "c"], "--to and a DST argument both name the destination"),
    (["migrate", "--live", "vm1", "--to", "zz"], "host 'zz' is not in the inventory"),
    (["migrate", "--live", "vm1", "--to", "a"], "no host can take vm1: a: source-host: vm1 runs there"),
    (["migrate", "--live", "vm1", "--weigher", "fast"], "Invalid value for '--weigher'"),
])
def test_bad_forms_fail_with_one_line_and_change_nothing(fleet, args, message):
    before = snapshot(fleet.settings)
    proc = run(fleet.settings, *args)
    assert proc.returncode in (2, 3, 4)
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(fleet.settings) == before
