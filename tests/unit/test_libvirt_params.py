"""The flags and parameters of the libvirt migration call, per option."""
from __future__ import annotations

import libvirt
import pytest

from livemig.drivers.base import MigrationDestination, MigrationOptions
from livemig.drivers.libvirt_params import BASE_FLAGS, migration_call, migration_uri

NOWHERE = MigrationDestination()


def test_defaults_are_a_live_peer_to_peer_move_of_the_definition_and_nothing_else():
    flags, params = migration_call(MigrationOptions(), NOWHERE)
    assert flags == (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                     | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_ABORT_ON_ERROR)
    assert params == {}


def test_shared_storage_is_the_unsafe_flag_and_bandwidth_a_parameter():
    flags, params = migration_call(MigrationOptions(shared_storage=True, bandwidth_mib_s=20), NOWHERE)
    assert flags == BASE_FLAGS | libvirt.VIR_MIGRATE_UNSAFE
    assert params == {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 20}


@pytest.mark.parametrize("address, port, uri", [
    ("10.0.0.2", 0, "tcp://10.0.0.2"),
    ("10.0.0.2", 49200, "tcp://10.0.0.2:49200"),
    ("fd00::2", 0, "tcp://[fd00::2]"),
    ("fd00::2", 49200, "tcp://[fd00::2]:49200"),
    ("migr-b.example", 0, "tcp://migr-b.example"),
])
def test_migration_uri(address, port, uri):
    assert migration_uri(address, port) == uri


def test_a_migration_network_sets_the_uri_and_the_listen_address():
    flags, params = migration_call(MigrationOptions(), MigrationDestination(migration_address="10.9.0.2"))
    assert flags == BASE_FLAGS
    assert params == {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.9.0.2",
                      libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "10.9.0.2"}


def test_tls_is_a_flag_and_the_certificates_name_a_parameter_only_when_given():
    flags, params = migration_call(MigrationOptions(tls=True), NOWHERE)
    assert flags == BASE_FLAGS | libvirt.VIR_MIGRATE_TLS
    assert params == {}
    _, params = migration_call(MigrationOptions(tls=True), MigrationDestination(tls_hostname="host-b"))
    assert params == {libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION: "host-b"}


def test_a_tls_hostname_without_tls_is_not_sent():
    flags, params = migration_call(MigrationOptions(), MigrationDestination(tls_hostname="host-b"))
    assert flags == BASE_FLAGS and params == {}


def test_parallel_connections_are_multifd():
    flags, params = migration_call(MigrationOptions(parallel_connections=4), NOWHERE)
    assert flags == BASE_FLAGS | libvirt.VIR_MIGRATE_PARALLEL
    assert params == {libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS: 4}


@pytest.mark.parametrize("method", ["xbzrle", "mt"])
def test_compression_is_a_flag_and_its_method(method):
    flags, params = migration_call(MigrationOptions(compression=method), NOWHERE)
    assert flags == BASE_FLAGS | libvirt.VIR_MIGRATE_COMPRESSED
    assert params == {libvirt.VIR_MIGRATE_PARAM_COMPRESSION: method}


@pytest.mark.parametrize("copy, flag", [("full", libvirt.VIR_MIGRATE_NON_SHARED_DISK),
                                        ("incremental", libvirt.VIR_MIGRATE_NON_SHARED_INC)])
def test_a_storage_copy_names_the_disks_it_copies(copy, flag):
    flags, params = migration_call(MigrationOptions(copy_storage=copy),
                                   MigrationDestination(copy_disks=["vda", "vdc"]))
    assert flags == BASE_FLAGS | flag
    assert params == {libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: ["vda", "vdc"]}


def test_no_storage_flag_without_disks_to_copy_or_with_copy_off():
    # Without a disk list libvirt would copy every disk it does not see as
    # shared, the shared ones included: no list, no copy.
    assert migration_call(MigrationOptions(copy_storage="full"), NOWHERE) == (BASE_FLAGS, {})
    assert migration_call(MigrationOptions(copy_storage="off"),
                          MigrationDestination(copy_disks=["vda"])) == (BASE_FLAGS, {})


def test_everything_together():
    options = MigrationOptions(shared_storage=True, bandwidth_mib_s=50, tls=True, parallel_connections=2,
                               compression="mt", copy_storage="full")
    dest = MigrationDestination(migration_address="10.9.0.2", migration_port=49152, tls_hostname="b",
                                copy_disks=["vdb"])
    flags, params = migration_call(options, dest)
    assert flags == (BASE_FLAGS | libvirt.VIR_MIGRATE_UNSAFE | libvirt.VIR_MIGRATE_TLS | libvirt.VIR_MIGRATE_PARALLEL
                     | libvirt.VIR_MIGRATE_COMPRESSED | libvirt.VIR_MIGRATE_NON_SHARED_DISK)
    assert params == {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 50,
                      libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.9.0.2:49152",
                      libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "10.9.0.2",
                      libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION: "b",
                      libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS: 2,
                      libvirt.VIR_MIGRATE_PARAM_COMPRESSION: "mt",
                      libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: ["vdb"]}


def test_the_destination_list_is_copied_not_shared():
    dest = MigrationDestination(copy_disks=["vda"])
    _, params = migration_call(MigrationOptions(copy_storage="full"), dest)
    params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS].append("vdz")
    assert dest.copy_disks == ["vda"]
