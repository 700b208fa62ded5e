"""The scheduler's weighers: each turns a host that passed the filters into a
sort key (lowest first); the host name ends every key, so ties break by
name and a plan is deterministic."""
from __future__ import annotations

from typing import Callable

from livemig.errors import InvalidInput
from livemig.scheduler.state import HostState, InstanceRequest

Weigher = Callable[[HostState, InstanceRequest], tuple]


def _fraction(free: float, total: float) -> float:
    return free / total if total > 0 else 0.0


def spread(host: HostState, instance: InstanceRequest) -> tuple:
    """The most free memory (as a fraction of the host's), then vCPUs:
    load evens out and a host failure hits fewer VMs."""
    return (-_fraction(host.memory_mb_free, host.memory_mb_total),
            -_fraction(host.vcpus_free, host.vcpus_total), host.name)


def pack(host: HostState, instance: InstanceRequest) -> tuple:
    """The least free room that still fits (memory, then vCPUs, left after
    placing the instance): fills hosts so that others can be emptied."""
    return (_fraction(host.memory_mb_free - instance.memory_mb, host.memory_mb_total),
            _fraction(host.vcpus_free - instance.vcpus, host.vcpus_total), host.name)


WEIGHERS: dict[str, Weigher] = {"spread": spread, "pack": pack}


def weigher_named(name: str) -> Weigher:
    try:
        return WEIGHERS[name]
    except KeyError:
        raise InvalidInput(f"unknown weigher {name!r} (one of: {', '.join(sorted(WEIGHERS))})") from None
