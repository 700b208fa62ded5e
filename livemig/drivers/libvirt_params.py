"""What one libvirt migration call is told: the flags and typed parameters
of `migrateToURI3`, from the migration's options and its destination.

A pure function, so that every combination can be tested without a daemon
and so that each feature (transport, storage, convergence) adds its flags in
one place. The facts behind the values were measured on libvirt 9.0 / QEMU
7.2 (shared/NOTES.md, "Migration policies here")."""
from __future__ import annotations

import ipaddress
from typing import Any

import libvirt

from livemig.drivers.base import MigrationDestination, MigrationOptions

# LIVE + PEER2PEER: the source daemon drives the job, so a controller that
# dies does not take the migration with it. PERSIST_DEST + UNDEFINE_SOURCE:
# the definition moves with the VM. ABORT_ON_ERROR: an I/O error on the
# source aborts the migration instead of pausing the guest with the
# migration still going.
BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
              | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_ABORT_ON_ERROR)

# The storage copy's flag: "full" copies the whole image into one
# pre-created on the destination; "incremental" only the top overlay, whose
# backing image must exist on both hosts.
STORAGE_COPY_FLAGS = {"full": libvirt.VIR_MIGRATE_NON_SHARED_DISK, "incremental": libvirt.VIR_MIGRATE_NON_SHARED_INC}


def migration_uri(address: str, port: int = 0) -> str:
    """The tcp:// URI of a migration-network address (an IPv6 address in
    brackets, as QEMU parses it)."""
    host = address
    try:
        if ipaddress.ip_address(address).version == 6:
            host = f"[{address}]"
    except ValueError:
        pass  # a host name
    return f"tcp://{host}:{port}" if port else f"tcp://{host}"


def migration_call(options: MigrationOptions, destination: MigrationDestination) -> tuple[int, dict[str, Any]]:
    """(flags, params) for `migrateToURI3`."""
    flags = BASE_FLAGS
    params: dict[str, Any] = {}
    if options.shared_storage:
        # Every local disk that is not copied lies on storage both hosts
        # share: libvirt 9 calls such a disk unsafe unless told.
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if options.bandwidth_mib_s:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(options.bandwidth_mib_s)

    if destination.migration_address:
        # The stream goes over the destination's migration network. The
        # listen address too: without it the destination QEMU listens on
        # its qemu.conf default and the source's connection is refused.
        params[libvirt.VIR_MIGRATE_PARAM_URI] = migration_uri(destination.migration_address,
                                                              destination.migration_port)
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = destination.migration_address

    if options.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
        if destination.tls_hostname:
            # The name the destination's certificate carries, when it is not
            # the address the stream connects to.
            params[libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION] = destination.tls_hostname

    if options.parallel_connections:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = int(options.parallel_connections)

    if options.compression:
        flags |= libvirt.VIR_MIGRATE_COMPRESSED
        params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = options.compression

    storage_flag = STORAGE_COPY_FLAGS.get(options.copy_storage)
    if storage_flag is not None and destination.copy_disks:
        flags |= storage_flag
        # Only the disks the precheck chose to copy: without the list
        # libvirt copies every writable disk it does not see as shared.
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(destination.copy_disks)

    converge_flags, converge_params = convergence_call(options)
    flags |= converge_flags
    params.update(converge_params)
    return flags, params


def convergence_call(options: MigrationOptions) -> tuple[int, dict[str, Any]]:
    """The flags and parameters that make a busy guest converge:
    auto-converge (QEMU throttles the guest's vCPUs from `initial` percent,
    `increment` more each pass that does not converge; measured here: it
    starts at the fourth pass) and post-copy (allowed, with its own
    bandwidth cap; the switch is the driver's monitor's)."""
    flags = 0
    params: dict[str, Any] = {}
    if options.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = int(options.auto_converge_initial)
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = int(options.auto_converge_increment)
    if options.post_copy_allowed:
        # Able to switch (migrateStartPostCopy): the job starts as pre-copy.
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
        if options.postcopy_bandwidth_mib_s:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = int(options.postcopy_bandwidth_mib_s)
    return flags, params
