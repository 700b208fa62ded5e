"""The scheduler's filters, one rule each. A filter's `why_not` returns None
when the host may take the instance, else the reason in an operator's words;
the scheduler reports the first filter that refused each host, by `name`.

The prechecks (livemig.prechecks) ask the hypervisors the same questions
when the migration starts; a filter here decides from the inventory only."""
from __future__ import annotations

import dataclasses
from typing import Protocol

from livemig.disk_sharing import judge_disks, refusal
from livemig.scheduler.state import HostState, InstanceRequest


@dataclasses.dataclass(frozen=True)
class Request:
    """What every filter is asked about: the instance, the host it runs on
    (None if not in the snapshot), and whether migration slots count."""

    instance: InstanceRequest
    source: HostState | None
    ignore_slots: bool = False
    # The migration's copy_storage: whether a local disk may be copied.
    copy_storage: str = "off"


class Filter(Protocol):
    name: str

    def why_not(self, host: HostState, request: Request) -> str | None: ...


def _n(value: float) -> str:
    return f"{value:g}"


class SourceHostFilter:
    """The instance's own host is never a destination."""

    name = "source-host"

    def why_not(self, host: HostState, request: Request) -> str | None:
        if host.name == request.instance.host:
            return f"{request.instance.name} runs there"
        return None


class EnabledFilter:
    name = "enabled"

    def why_not(self, host: HostState, request: Request) -> str | None:
        if not host.enabled:
            return "host is disabled" + (f" ({host.disabled_reason})" if host.disabled_reason else "")
        return None


class MaintenanceFilter:
    name = "maintenance"

    def why_not(self, host: HostState, request: Request) -> str | None:
        if host.maintenance:
            return "host is in maintenance" + (f" ({host.maintenance_reason})" if host.maintenance_reason else "")
        return None


class StandbyFilter:
    """A host a consolidation emptied stays empty (it may be powered off)."""

    name = "standby"

    def why_not(self, host: HostState, request: Request) -> str | None:
        if host.standby:
            return "host is in standby" + (f" ({host.standby_reason})" if host.standby_reason else "")
        return None


class ZoneFilter:
    """Live migration stays within a zone (as the prechecks require)."""

    name = "zone"

    def why_not(self, host: HostState, request: Request) -> str | None:
        if request.source is not None and host.zone != request.source.zone:
            return f"zone {host.zone}, the instance is in {request.source.zone}"
        return None


class VcpusFilter:
    name = "vcpus"

    def why_not(self, host: HostState, request: Request) -> str | None:
        needed = request.instance.vcpus
        if needed > host.vcpus_free:
            return f"needs {needed} vCPUs, {_n(max(0.0, host.vcpus_free))} free"
        return None


class MemoryFilter:
    name = "memory"

    def why_not(self, host: HostState, request: Request) -> str | None:
        needed = request.instance.memory_mb
        if needed > host.memory_mb_free:
            return f"needs {needed} MB, {_n(max(0.0, host.memory_mb_free))} free"
        return None


class DiskFilter:
    name = "disk"

    def why_not(self, host: HostState, request: Request) -> str | None:
        needed = request.instance.disk_gb
        if needed > host.disk_gb_free:
            return f"needs {needed} GB, {_n(max(0.0, host.disk_gb_free))} free"
        return None


class CpuModelFilter:
    """The host's CPU is the source's, or the instance's named CPU model: a
    VM keeps its CPU across a live migration, so a different host CPU is a
    risk the scheduler does not take (the precheck asks the hypervisor,
    which knows every model a host supports, for an explicit destination)."""

    name = "cpu-model"

    def why_not(self, host: HostState, request: Request) -> str | None:
        wanted = request.source.cpu_model if request.source is not None else None
        model = request.instance.cpu_model
        if wanted is None or host.cpu_model == wanted:
            return None
        if model is not None and not model.startswith("(") and host.cpu_model == model:
            return None
        return f"host CPU {host.cpu_model or 'unknown'}, the source's is {wanted}"


class HypervisorVersionFilter:
    """A VM cannot migrate to an older hypervisor (it may lack a device or a
    machine type the source's gave the VM)."""

    name = "hypervisor-version"

    def why_not(self, host: HostState, request: Request) -> str | None:
        if request.source is not None and host.hypervisor_version < request.source.hypervisor_version:
            return (f"hypervisor {host.hypervisor_version} is older than the source's "
                    f"{request.source.hypervisor_version}")
        return None


class NetworksFilter:
    """Every bridge or network the instance's interfaces use is on the host.
    A host whose networks are not known (none recorded: never synced, or its
    hypervisor cannot list them) passes: the destination's network setup
    checks each interface for real, and a failure there tries the next host."""

    name = "networks"

    def why_not(self, host: HostState, request: Request) -> str | None:
        if not host.networks:
            return None
        missing = sorted(request.instance.networks - host.networks)
        if missing:
            return f"lacks {', '.join(missing)}"
        return None


class StorageFilter:
    """Every disk may migrate: a network disk, a local one under a path both
    hosts share, or a local file the migration's copy_storage copies (the
    prechecks' rule, disk_sharing)."""

    name = "storage"

    def why_not(self, host: HostState, request: Request) -> str | None:
        if request.source is None or not request.instance.disks:
            return None
        return refusal(judge_disks(request.instance.disks, request.source, host, request.copy_storage))


class AntiAffinityFilter:
    """Instances that share a group label never share a host."""

    name = "anti-affinity"

    def why_not(self, host: HostState, request: Request) -> str | None:
        group = request.instance.group
        if group is not None and group in host.groups:
            return f"an instance of group {group} is already there"
        return None


class SlotsFilter:
    """A migration slot is free (in plus out, max_concurrent_migrations). A
    plan ignores it: its moves wait for slots as they run."""

    name = "slots"

    def why_not(self, host: HostState, request: Request) -> str | None:
        if not request.ignore_slots and host.busy >= host.slots:
            return f"{host.busy} of {host.slots} migration slots busy"
        return None


# In the order they are asked: the first refusal is the one reported.
FILTERS: tuple[Filter, ...] = (
    SourceHostFilter(), EnabledFilter(), MaintenanceFilter(), StandbyFilter(), ZoneFilter(), VcpusFilter(), MemoryFilter(),
    DiskFilter(), CpuModelFilter(), HypervisorVersionFilter(), NetworksFilter(), StorageFilter(), AntiAffinityFilter(),
    SlotsFilter(),
)


def first_refusal(host: HostState, request: Request,
                  filters: tuple[Filter, ...] = FILTERS) -> tuple[str, str] | None:
    """(filter name, reason) of the first filter that refuses the host, or None."""
    for rule in filters:
        why = rule.why_not(host, request)
        if why is not None:
            return rule.name, why
    return None
