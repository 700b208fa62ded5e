"""livemig: live migration of KVM/libvirt VMs, as revertible, persisted TaskFlow flows.

The embedded API::

    import livemig
    ctx = livemig.admin_context("ops")
    view = livemig.migrate(ctx, "web-1", "host-a", "host-b")

The names below load with their modules on first use (PEP 562): every
`livemig.X` import runs this file first, and processes that use none of the
library must not load it. The lab runs each host's libvirtd under `python -m
livemig.lab.subreaper`, which lives as long as the daemon and forks it: with
the API loaded it would hold SQLAlchemy, TaskFlow and libvirt-python (58 MB
instead of 12 MB) in each such process."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "livemig.api": ("abort", "add_host", "choose_destination", "close", "create_migration", "host_resources", "list_hosts",
                    "list_instances", "list_migrations", "list_policies", "migrate", "reconcile", "resume", "set_host_enabled", "show_host",
                    "show_migration", "show_policy", "sync_hosts", "force_complete"),
    "livemig.operations.api": ("abort_operation", "consolidate_fleet", "drain_host", "list_operations",
                               "rebalance_fleet", "resume_operation", "show_operation", "undrain_host", "wake_host"),
    "livemig.config": ("Settings", "load_settings"),
    "livemig.context": ("RequestContext", "admin_context"),
    "livemig.errors": ("LivemigError", "MigrationFailed", "NoValidHost"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_MODULE_OF)

if TYPE_CHECKING:
    from livemig.api import (
        abort, add_host, choose_destination, close, create_migration, force_complete, host_resources, list_hosts,
        list_instances, list_migrations, list_policies, migrate, reconcile, resume, set_host_enabled, show_host,
        show_migration, show_policy, sync_hosts,
    )
    from livemig.config import Settings, load_settings
    from livemig.operations.api import (
        abort_operation, consolidate_fleet, drain_host, list_operations, rebalance_fleet, resume_operation,
        show_operation, undrain_host, wake_host,
    )
    from livemig.context import RequestContext, admin_context
    from livemig.errors import LivemigError, MigrationFailed, NoValidHost


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'livemig' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
