"""Item 10 of issue 13: every setting has a type and a range, checked when the
settings are loaded (file, environment, overrides); a bad one is one line on
stderr, exit 2, and nothing recorded."""
from __future__ import annotations

import dataclasses
import os

import pytest

import livemig
from livemig.config import MIGRATION_OPTIONS, SPECS, Settings, check_migration_options, load_settings
from livemig.errors import InvalidInput
from tests.unit.test_cli import run, snapshot


def test_every_setting_has_a_spec():
    assert set(SPECS) == {f.name for f in dataclasses.fields(Settings)}
    assert set(MIGRATION_OPTIONS) <= set(SPECS)


BAD_ENVIRONMENT = [
    ("LIVEMIG_BANDWIDTH_MIB_S", "-5", "setting bandwidth_mib_s must be an integer from 0 to 1000000, not -5"),
    ("LIVEMIG_BANDWIDTH_MIB_S", "fast", "setting bandwidth_mib_s must be an integer"),
    ("LIVEMIG_MAX_DOWNTIME_MS", "0", "setting max_downtime_ms must be an integer from 1"),
    ("LIVEMIG_QUEUE_TIMEOUT_S", "-1", "setting queue_timeout_s must be a number from 0"),
    ("LIVEMIG_POLL_INTERVAL_S", "nan", "setting poll_interval_s must be a number"),
    ("LIVEMIG_ZOOKEEPER_SESSION_TIMEOUT", "inf", "setting zookeeper_session_timeout must be a number"),
    ("LIVEMIG_CONDUCTOR_MAX_MIGRATIONS", "0", "setting conductor_max_migrations must be an integer from 1"),
    ("LIVEMIG_ZOOKEEPER_HOSTS", "zk1:99999", "setting zookeeper_hosts must be host:port"),
    ("LIVEMIG_ZOOKEEPER_ROOT", "livemig", "setting zookeeper_root must be a znode path"),
    ("LIVEMIG_DOMAIN_TYPE", "xen", "setting domain_type must be one of kvm, qemu"),
    ("LIVEMIG_UNRECOVERABLE_POLICY", "shrug", "setting unrecoverable_policy must be one of"),
    ("LIVEMIG_DATABASE_URL", "mysql://x/y", "setting database_url must be a sqlite:/// or postgresql:// URL"),
    ("LIVEMIG_CREDENTIAL_KEY_FILE", "key", "setting credential_key_file must be an absolute path"),
]


@pytest.mark.parametrize("name,value,message", BAD_ENVIRONMENT, ids=[f"{n}={v}" for n, v, _ in BAD_ENVIRONMENT])
def test_a_bad_environment_value_is_refused_naming_it(tmp_path, name, value, message):
    with pytest.raises(InvalidInput) as caught:
        load_settings({"LIVEMIG_DATA_DIR": str(tmp_path), name: value})
    assert str(caught.value).startswith(message)
    assert str(caught.value).endswith(f"(from {name})")


def test_config_file_values_have_types_and_ranges(tmp_path):
    config = tmp_path / "config.toml"
    env = {"LIVEMIG_CONFIG": str(config), "LIVEMIG_DATA_DIR": str(tmp_path)}
    for text, message in [('bandwidth_mib_s = "5"', "setting bandwidth_mib_s must be an integer"),
                          ("domain_type = 1", "setting domain_type must be one of kvm, qemu"),
                          ("max_downtime_ms = 2.5", "setting max_downtime_ms must be an integer"),
                          ("downtime_steps = true", "setting downtime_steps must be an integer"),
                          ("queue_timeout_s = -3", "setting queue_timeout_s must be a number from 0"),
                          ("bandwith_mib_s = 5", "unknown setting(s): bandwith_mib_s")]:
        config.write_text(f"[livemig]\n{text}\n")
        with pytest.raises(InvalidInput, match="config file") as caught:
            load_settings(env)
        assert message in str(caught.value), text
    # What is right in TOML's own types is accepted (an integer where a number goes).
    config.write_text("[livemig]\npoll_interval_s = 1\nbandwidth_mib_s = 100\n")
    settings = load_settings(env)
    assert (settings.poll_interval_s, settings.bandwidth_mib_s) == (1, 100)


def test_overrides_and_constructed_settings_are_checked(tmp_path):
    with pytest.raises(InvalidInput, match=r"bandwidth_mib_s .* \(from the command line or caller\)"):
        load_settings({"LIVEMIG_DATA_DIR": str(tmp_path)}, bandwidth_mib_s=-5)
    with pytest.raises(InvalidInput, match="setting bandwidth_mib_s"):
        Settings(data_dir=str(tmp_path), bandwidth_mib_s=-5)
    with pytest.raises(InvalidInput, match="setting queue_timeout_s"):
        Settings(data_dir=str(tmp_path)).replace(queue_timeout_s=float("nan"))


def test_migration_options_are_checked_like_settings():
    assert check_migration_options({"queue_timeout_s": 0, "max_downtime_ms": 50}) == \
        {"queue_timeout_s": 0.0, "max_downtime_ms": 50}
    with pytest.raises(InvalidInput, match="option bandwidth_mib_s must be an integer from 0"):
        check_migration_options({"bandwidth_mib_s": -5})
    with pytest.raises(InvalidInput, match="unknown migration option"):
        check_migration_options({"database_url": "sqlite:////tmp/x.db"})


def test_a_bad_option_records_no_migration(cloud):
    before = snapshot(cloud.settings)
    with pytest.raises(InvalidInput, match="bandwidth_mib_s"):
        livemig.migrate(livemig.admin_context("tests"), "vm1", "a", "b", settings=cloud.settings,
                        options={"bandwidth_mib_s": -5})
    assert snapshot(cloud.settings) == before
    assert cloud.running_on() == ["a"]


def test_cli_with_a_negative_bandwidth_is_one_line_exit_2_and_records_nothing(cloud, monkeypatch):
    """The issue's reproduction: accepted, the libvirt call raised in its
    thread and the migration was recorded with a false reason."""
    before = snapshot(cloud.settings)
    monkeypatch.setenv("LIVEMIG_BANDWIDTH_MIB_S", "-5")
    proc = run(cloud.settings, "migrate", "--live", "a", "vm1", "b")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "livemig: error: setting bandwidth_mib_s must be an integer from 0 to 1000000, not -5 "
        "(from LIVEMIG_BANDWIDTH_MIB_S)"]
    assert snapshot(cloud.settings) == before
    assert cloud.running_on() == ["a"] and cloud.instance().host == "a"


def test_cli_with_a_bad_setting_creates_no_database(tmp_path, monkeypatch):
    settings = Settings(data_dir=str(tmp_path / "fresh"))
    monkeypatch.setenv("LIVEMIG_QUEUE_TIMEOUT_S", "soon")
    proc = run(settings, "host", "list")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "livemig: error: setting queue_timeout_s must be a number from 0 to 604800, not 'soon' "
        "(from LIVEMIG_QUEUE_TIMEOUT_S)"]
    assert not os.path.exists(tmp_path / "fresh")
