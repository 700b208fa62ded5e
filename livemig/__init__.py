"""livemig: live migration of KVM/libvirt VMs, as revertible, persisted TaskFlow flows.

The embedded API::

    import livemig
    ctx = livemig.admin_context("ops")
    view = livemig.migrate(ctx, "web-1", "host-a", "host-b")

The names below load with their modules on first use (PEP 562), so that
`import livemig` and the `livemig` command's own start stay cheap until they
need SQLAlchemy and TaskFlow (see livemig.cli.entry)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from livemig import lazy

# Before anything imports them: see livemig.lazy.
lazy.defer("taskflow.utils.schema_utils", "oslo_utils.netutils", "oslo_serialization.msgpackutils", "netaddr")

_EXPORTS = {
    "livemig.api": ("abort", "add_host", "close", "create_migration", "host_resources", "list_hosts",
                    "list_instances", "list_migrations", "migrate", "reconcile", "resume", "set_host_enabled", "show_migration",
                    "sync_hosts"),
    "livemig.config": ("Settings", "load_settings"),
    "livemig.context": ("RequestContext", "admin_context"),
    "livemig.errors": ("LivemigError", "MigrationFailed"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_MODULE_OF)

if TYPE_CHECKING:
    from livemig.api import (
        abort, add_host, close, create_migration, host_resources, list_hosts, list_instances, list_migrations, migrate,
        reconcile, resume, set_host_enabled, show_migration, sync_hosts,
    )
    from livemig.config import Settings, load_settings
    from livemig.context import RequestContext, admin_context
    from livemig.errors import LivemigError, MigrationFailed


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'livemig' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
