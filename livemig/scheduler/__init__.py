"""livemig's scheduler, in the style of Nova's filter scheduler: filters
remove the hosts that cannot take an instance (each says why, in words an
operator reads), weighers rank the rest, ties break by name.

Everything here is pure (a Snapshot in, a Selection or a plan out) except
`inventory.snapshot`, which reads the Snapshot from the database."""
from livemig.scheduler.select import Placement, Refusal, Selection, plan, select
from livemig.scheduler.state import Disk, HostState, InstanceRequest, Snapshot

__all__ = ["Disk", "HostState", "InstanceRequest", "Placement", "Refusal", "Selection", "Snapshot", "plan", "select"]
