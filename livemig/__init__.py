"""livemig: live migration of KVM/libvirt VMs, as revertible, persisted TaskFlow flows.

The embedded API::

    import livemig
    ctx = livemig.admin_context("ops")
    view = livemig.migrate(ctx, "web-1", "host-a", "host-b")
"""
from livemig import lazy

# Before anything imports them: see livemig.lazy.
lazy.defer("taskflow.utils.schema_utils", "oslo_utils.netutils", "oslo_serialization.msgpackutils", "netaddr")

from livemig.api import (  # noqa: E402
    abort, add_host, create_migration, host_resources, list_hosts, list_instances, list_migrations, migrate,
    resume, set_host_enabled, show_migration, sync_hosts,
)
from livemig.config import Settings, load_settings  # noqa: E402
from livemig.context import RequestContext, admin_context  # noqa: E402
from livemig.errors import LivemigError, MigrationFailed  # noqa: E402

__all__ = [
    "abort", "add_host", "create_migration", "host_resources", "list_hosts", "list_instances", "list_migrations",
    "migrate", "resume", "set_host_enabled", "show_migration", "sync_hosts", "Settings", "load_settings",
    "RequestContext", "admin_context", "LivemigError", "MigrationFailed",
]
