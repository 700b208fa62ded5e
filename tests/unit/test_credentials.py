"""Registered credentials (item 9 of issue 13): in the database, encrypted
with the key file every controller shares; a controller with another key, or
none, refuses to use them and says why."""
from __future__ import annotations

import os

import pytest

import livemig
from livemig.credentials import CredentialKeyError, register_credential, registered_credential
from livemig.services import services_for

CTX = livemig.admin_context("tests")


def make_private(cloud):
    cloud.driver.update_host(cloud.uri("a"), secrets={"vol-1": {"type": "iscsi", "value": "hidden", "private": True}})


def test_a_registered_credential_is_defined_on_the_destination(cloud):
    make_private(cloud)
    register_credential(services_for(cloud.settings), "vol-1", b"the-value")
    assert oct(os.stat(cloud.settings.credential_key_file).st_mode & 0o777) == "0o600"
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert view.status == "completed"
    assert cloud.host_record("b")["secrets"]["vol-1"]["value"] == "the-value"


def test_another_controllers_key_is_refused_and_the_vm_stays(cloud, tmp_path):
    make_private(cloud)
    register_credential(services_for(cloud.settings), "vol-1", b"the-value")
    other = cloud.settings.replace(credential_key_file=str(tmp_path / "other.key"))
    register_credential(services_for(other), "unrelated", b"x")  # makes the other key
    with pytest.raises(CredentialKeyError, match="every controller needs the same credential_key_file"):
        registered_credential(services_for(other), "vol-1")
    with pytest.raises(livemig.MigrationFailed, match="stored with another key"):
        livemig.migrate(CTX, "vm1", "a", "b", settings=other)
    assert cloud.running_on() == ["a"]
    assert "vol-1" not in cloud.host_record("b")["secrets"]


def test_a_missing_key_file_is_not_made_up_when_reading(cloud, tmp_path):
    register_credential(services_for(cloud.settings), "vol-1", b"the-value")
    missing = cloud.settings.replace(credential_key_file=str(tmp_path / "nowhere.key"))
    with pytest.raises(CredentialKeyError, match="does not exist"):
        registered_credential(services_for(missing), "vol-1")
    assert not (tmp_path / "nowhere.key").exists()
    assert registered_credential(services_for(cloud.settings), "nothing-registered") is None
