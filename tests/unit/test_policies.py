"""Migration policies and per-migration options: validation, named policies
from the settings file, rules, flags over the policy, the record."""
from __future__ import annotations

import json
import tomllib

import pytest

import livemig
from livemig.errors import Conflict, InvalidInput
from livemig.policies import InstanceFacts, MigrationPolicyOptions, book_from_toml, built_in_book, resolve
from livemig.policies.options import SPECS, check_options
from tests.unit.test_cli import run, snapshot

CTX = livemig.admin_context("tests")

CONFIG = """
[livemig]
poll_interval_s = 0.02

[policy.db-tier]
description = "databases"
auto_converge = true
post_copy = "on-stall"
max_downtime_ms = 200

[policy.batch]
timeout_action = "force-complete"

[policy_rule.prod]
policy = "batch"
project = "p1"

[policy_rule.prod-db]
policy = "db-tier"
project = "p1"
labels = { tier = "db" }

[policy_rule.a-names]
policy = "post-copy"
name = "vm*"
"""


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("LIVEMIG_CONFIG", str(path))
    return path


# -- options ----------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("max_downtime_ms", 0), ("max_downtime_ms", True), ("downtime_steps", 0), ("bandwidth_mib_s", -1),
    ("postcopy_bandwidth_mib_s", 1.5), ("auto_converge", 1), ("auto_converge_initial", 0),
    ("auto_converge_initial", 101), ("auto_converge_increment", 0), ("post_copy", "sometimes"),
    ("post_copy_after_s", 0), ("timeout_s", 0.0), ("timeout_s", float("nan")), ("timeout_action", "pause"),
    ("stall_s", -1), ("tls", "yes"), ("parallel_connections", 65), ("compression", "zstd"),
    ("copy_storage", "some"), ("queue_timeout_s", -1),
]


def test_every_option_of_the_contract_is_checked():
    assert set(SPECS) == {f for f in MigrationPolicyOptions.__dataclass_fields__}
    assert {name for name, _ in BAD_OPTIONS} == set(SPECS)


@pytest.mark.parametrize("name, value", BAD_OPTIONS)
def test_a_bad_option_value_is_one_line_naming_it(name, value):
    with pytest.raises(InvalidInput) as raised:
        check_options({name: value}, "--somewhere")
    message = str(raised.value)
    assert message.startswith(f"option {name} must be ") and message.endswith("(from --somewhere)")
    assert "\n" not in message


def test_good_options_keep_their_type():
    assert check_options({"timeout_s": 5, "post_copy": "after-seconds", "auto_converge": True,
                          "compression": "", "tls": None}) == \
        {"timeout_s": 5.0, "post_copy": "after-seconds", "auto_converge": True, "compression": ""}
    with pytest.raises(InvalidInput, match="unknown migration option"):
        check_options({"database_url": "x"})


# -- policies and rules -----------------------------------------------------------------------------

def test_the_most_specific_rule_wins_and_ties_go_by_name(config_file):
    book = book_from_toml(tomllib.loads(CONFIG), "test")
    assert book.policy_for(InstanceFacts("vm1", "p1", {"tier": "db"}))[0].name == "db-tier"  # 2 criteria
    assert book.policy_for(InstanceFacts("vm1", "p1", {"tier": "web"}))[0].name == "post-copy"  # tie: a-names
    assert book.policy_for(InstanceFacts("web", "p1"))[0].name == "batch"
    assert book.policy_for(InstanceFacts("web", "p2"))[0].name == "default"


def test_flags_override_the_policy_and_defaults_fill_the_rest():
    resolved = resolve(built_in_book(), InstanceFacts("x"), "minimal-downtime",
                       {"max_downtime_ms": 50, "post_copy": "off"})
    assert (resolved.policy, resolved.options.max_downtime_ms, resolved.options.auto_converge,
            resolved.options.post_copy, resolved.options.stall_s) == ("minimal-downtime", 50, True, "off", 30.0)
    assert resolved.options.timeout_s is None  # the runner's setting
    with pytest.raises(InvalidInput, match="unknown migration policy 'nope'"):
        resolve(built_in_book(), InstanceFacts("x"), "nope")


@pytest.mark.parametrize("text, error", [
    ('[policy.p]\npost_copy = "maybe"', "option post_copy must be one of off, after-first-pass"),
    ('[policy.p]\nqueue_timeout_s = 3', "queue_timeout_s is a request's"),
    ('[policy_rule.r]\npolicy = "nope"', "policy rule r: policy must name a policy"),
    ('[policy_rule.r]\npolicy = "default"\nhost = "a"', "policy rule r: unknown key(s) host"),
    ('[policy_rule.r]\npolicy = "default"\nlabels = { a = 1 }', "labels must be a table of strings"),
])
def test_a_bad_policy_file_is_refused_naming_what(tmp_path, monkeypatch, cloud, text, error):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    monkeypatch.setenv("LIVEMIG_CONFIG", str(path))
    before = snapshot(cloud.settings)
    with pytest.raises(InvalidInput, match=error.replace("(", r"\(").replace(")", r"\)")):
        livemig.migrate(CTX, "vm1", settings=cloud.settings)
    assert snapshot(cloud.settings) == before


# -- the migration record ---------------------------------------------------------------------------

def test_a_migration_records_its_policy_and_options(cloud):
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings, policy="post-copy",
                           options={"bandwidth_mib_s": 30})
    assert view.status == "completed" and cloud.running_on() == ["b"]
    row = cloud.migration(view.id)
    assert row.policy == "post-copy"
    assert MigrationPolicyOptions(**row.options) == MigrationPolicyOptions(post_copy="after-first-pass",
                                                                         bandwidth_mib_s=30)
    assert view.policy == "post-copy" and view.options["post_copy"] == "after-first-pass"


def test_rules_choose_by_labels_of_the_domain_metadata(cloud, config_file):
    uuid = cloud.driver.create_domain(cloud.uri("a"), "db-1", project="p1", memory_mb=256,
                                      labels={"tier": "db"})
    livemig.sync_hosts(CTX, settings=cloud.settings)
    assert cloud.instance(uuid).labels == {"tier": "db"}
    view = livemig.migrate(CTX, "db-1", "a", "b", settings=cloud.settings)
    row = cloud.migration(view.id)
    assert (row.policy, row.options["auto_converge"], row.options["max_downtime_ms"]) == ("db-tier", True, 200)
    trail = [e.message for e in livemig.show_migration(view.id, settings=cloud.settings).events]
    assert any("policy db-tier by rule prod-db" in m for m in trail)


def test_a_conductor_runs_the_migration_with_its_recorded_options(cloud):
    """The options travel in the flow (its logbook), not the runner's settings."""
    from livemig.services import flow_services
    from livemig.flows.live_migration import get_live_migration_flow
    from tests.unit.test_flow_contract import _atoms

    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=cloud.settings, policy="large-vm",
                                    options={"timeout_s": 12})
    flow = get_live_migration_flow(cloud.migration(view.id).options)
    seen = {(t.services.options.post_copy, t.services.options.timeout_s, t.services.settings.max_downtime_ms)
            for t in _atoms(flow)}
    assert seen == {("on-stall", 12.0, 500)}
    assert flow_services({}).options == MigrationPolicyOptions()


# -- the command line --------------------------------------------------------------------------------

def test_migrate_flags_override_the_policy_and_migration_show_prints_them(cloud):
    proc = run(cloud.settings, "migrate", "--live", "vm1", "--to", "b", "--policy", "minimal-downtime",
               "--max-downtime", "80", "--timeout", "40", "--post-copy")
    assert proc.returncode == 0, proc.stderr
    row = cloud.last_migration()
    assert (row.policy, row.options["max_downtime_ms"], row.options["timeout_s"], row.options["post_copy"],
            row.options["auto_converge"]) == ("minimal-downtime", 80, 40.0, "after-first-pass", True)
    shown = run(cloud.settings, "migration", "show", str(row.id))
    lines = shown.stdout.splitlines()
    assert any(line.split() == ["policy", "minimal-downtime"] for line in lines)
    options_line = next(line for line in lines if line.startswith("options "))
    assert "max_downtime_ms=80" in options_line and "post_copy=after-first-pass" in options_line


@pytest.mark.parametrize("args, error", [
    (["--bandwidth", "-3"], "option bandwidth_mib_s must be an integer from 0 to 1000000, not -3 (from --bandwidth)"),
    (["--timeout", "0"], "option timeout_s must be a number above 0"),
    (["--parallel", "99"], "option parallel_connections must be an integer from 0 to 64, not 99 (from --parallel)"),
    (["--policy", "nope"], "unknown migration policy 'nope'"),
    (["--post-copy", "sometimes"], "Invalid value for '--post-copy'"),
])
def test_a_bad_flag_is_one_line_exit_2_and_records_nothing(cloud, args, error):
    before = snapshot(cloud.settings)
    proc = run(cloud.settings, "migrate", "--live", "vm1", *args)
    assert proc.returncode == 2
    assert error in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert snapshot(cloud.settings) == before


def test_policy_list_and_show_say_whom_each_applies_to(cloud, config_file):
    cloud.driver.create_domain(cloud.uri("b"), "web", project="p2", memory_mb=128)
    livemig.sync_hosts(CTX, settings=cloud.settings)
    data = json.loads(run(cloud.settings, "policy", "list", "--format", "json").stdout)
    by_name = {p["name"]: p for p in data}
    assert set(by_name) >= {"default", "minimal-downtime", "post-copy", "suspend-if-needed", "large-vm",
                            "db-tier", "batch"}
    assert by_name["post-copy"]["instances"] == ["vm1"]  # vm* in p1: the tie goes to a-names
    assert by_name["default"]["instances"] == ["web"]
    assert by_name["batch"]["rules"] == [{"name": "prod", "criteria": "project=p1"}]
    shown = run(cloud.settings, "policy", "show", "db-tier")
    assert shown.returncode == 0, shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert ["auto_converge", "true"] in lines and ["tls", "false", "(default)"] in lines
    assert ["rule", "prod-db", "project=p1", "label", "tier=db"] in lines
    missing = run(cloud.settings, "policy", "show", "nope")
    assert missing.returncode == 2 and "unknown migration policy 'nope'" in missing.stderr


def test_force_complete_is_recorded_for_the_runner_and_refused_when_not_running(cloud):
    view = livemig.create_migration(CTX, "vm1", "a", "b", settings=cloud.settings, policy="post-copy")
    with pytest.raises(Conflict, match="only a running migration"):
        livemig.force_complete(CTX, view.id, settings=cloud.settings)
    assert not cloud.migration(view.id).force_complete_requested
    proc = run(cloud.settings, "migration", "force-complete", str(view.id))
    assert proc.returncode != 0 and "only a running migration" in proc.stderr


def test_drain_passes_its_policy_to_every_move(cloud):
    from livemig.operations import api as operations

    with pytest.raises(InvalidInput, match="unknown migration policy"):
        operations.drain_host(CTX, "a", settings=cloud.settings, policy="nope")
    view = operations.drain_host(CTX, "a", settings=cloud.settings, policy="suspend-if-needed")
    assert view.status == "completed"
    row = cloud.last_migration()
    assert (row.operation_id, row.policy, row.options["timeout_action"]) == (view.id, "suspend-if-needed",
                                                                            "force-complete")
