"""Issue 16, a dedicated migration network: per host, the address the
migration stream to it uses, kept in the inventory and given to the driver."""
from __future__ import annotations

import pytest

import livemig
from livemig import api
from livemig.errors import InvalidInput
from livemig.migration_network import checked_host_address
from tests.unit.test_cli import run

CTX = livemig.admin_context("tests")


@pytest.mark.parametrize("raw, kept", [
    ("10.9.0.2", "10.9.0.2"), ("fd00::2", "fd00::2"), ("[fd00::2]", "fd00::2"), ("FD00:0::2", "fd00::2"),
    ("migr-b.example.org", "migr-b.example.org"), ("Host-B", "host-b"), ("host-b.", "host-b"),
    (None, None), ("", None),
])
def test_an_address_is_an_ip_address_or_a_host_name(raw, kept):
    assert checked_host_address(raw) == kept


@pytest.mark.parametrize("raw", ["tcp://10.9.0.2", "10.9.0.2:49152", "host b", " 10.9.0.2", "-host", "a..b",
                                 "10.9.0.300", "host/b", "x" * 64])
def test_anything_else_is_refused_naming_it(raw):
    with pytest.raises(InvalidInput, match="must be an IP address or a host name"):
        checked_host_address(raw)


def hosts(settings):
    return {h.name: h for h in livemig.list_hosts(settings=settings)}


def test_the_migration_to_a_host_goes_to_its_migration_address(cloud):
    api.set_host_migration_network(CTX, "b", "10.9.0.2", "b.migration.example", settings=cloud.settings)
    view = livemig.migrate(CTX, "vm1", "a", "b", settings=cloud.settings)
    assert view.status == "completed"
    assert cloud.domains_on("b")[cloud.vm]["migrated_with"]["migration_address"] == "10.9.0.2"
    assert cloud.domains_on("b")[cloud.vm]["migrated_with"]["tls_hostname"] == "b.migration.example"
    # And back: a has none, so the stream goes where a's URI points.
    livemig.migrate(CTX, "vm1", "b", "a", settings=cloud.settings)
    assert cloud.domains_on("a")[cloud.vm]["migrated_with"]["migration_address"] == ""


def test_host_add_set_and_list_from_the_cli(cloud, settings):
    cloud.driver.create_host(cloud.uri("d"))
    added = run(settings, "host", "add", "d", "--uri", cloud.uri("d"), "--migration-address", "10.9.0.4")
    assert added.returncode == 0, added.stderr
    assert hosts(settings)["d"].migration_address == "10.9.0.4"
    listed = run(settings, "host", "list")
    assert "MIGRATION_ADDRESS" in listed.stdout and "10.9.0.4" in listed.stdout
    # A TLS name alone keeps the address.
    named = run(settings, "host", "set", "d", "--migration-tls-name", "d.example")
    assert named.returncode == 0, named.stderr
    assert (hosts(settings)["d"].migration_address, hosts(settings)["d"].migration_tls_name) == \
        ("10.9.0.4", "d.example")
    moved = run(settings, "host", "set", "d", "--migration-address", "fd00::4")
    assert moved.returncode == 0, moved.stderr
    assert (hosts(settings)["d"].migration_address, hosts(settings)["d"].migration_tls_name) == \
        ("fd00::4", "d.example")
    cleared = run(settings, "host", "set", "d", "--no-migration-network")
    assert cleared.returncode == 0, cleared.stderr
    assert (hosts(settings)["d"].migration_address, hosts(settings)["d"].migration_tls_name) == (None, None)


@pytest.mark.parametrize("args, message", [
    (["--migration-address", "tcp://10.9.0.4"],
     "livemig: error: migration address 'tcp://10.9.0.4' must be an IP address or a host name (no scheme, "
     "port or path)"),
    # The shared path is good, the address is not: neither is written.
    (["--shared-path", "/srv/nfs", "--migration-address", "10.9.0.4:1"],
     "livemig: error: migration address '10.9.0.4:1' must be an IP address or a host name (no scheme, port or "
     "path)"),
    (["--migration-address", "10.9.0.4", "--no-migration-network"],
     "livemig: error: give either --migration-address/--migration-tls-name or --no-migration-network "
     "(see `livemig host set --help`)"),
    ([], "livemig: error: nothing to change: give --shared-path PATH (repeatable), --no-shared-paths, "
         "--migration-address ADDRESS, --migration-tls-name NAME or --no-migration-network "
         "(see `livemig host set --help`)"),
])
def test_bad_host_set_input_is_one_line_exit_2_and_changes_nothing(cloud, settings, args, message):
    api.set_host_migration_network(CTX, "b", "10.9.0.2", settings=settings)
    before = hosts(settings)
    bad = run(settings, "host", "set", "b", *args)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [message]
    assert hosts(settings) == before


def test_host_add_refuses_a_bad_address_and_records_nothing(cloud, settings):
    cloud.driver.create_host(cloud.uri("d"))
    bad = run(settings, "host", "add", "d", "--uri", cloud.uri("d"), "--migration-tls-name", "no spaces please")
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("livemig: error: TLS name 'no spaces please' must be an IP address or a host name "
                                  "(no scheme, port or path)")
    assert "d" not in hosts(settings)
