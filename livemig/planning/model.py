"""What a fleet planner (rebalance, consolidate) reads and returns.

A planner is a pure function: a `Fleet` in, a `Plan` out. It touches no
database and no hypervisor (Ganeti's htools are the model: `hbal` computes,
the job queue executes), so it can be tested on thousands of generated
fleets. `livemig.operations` builds the `Fleet` from the inventory and the
load samples, and runs the plan's moves as ordinary migrations, wave after
wave.

Units: CPU in cores (host CPU seconds per second, so instance loads add up
on a host), memory in MiB. A host has two capacities: what it offers for
allocation (its physical size times its allocation ratios, as the scheduler
counts) and its physical size (what measured load is held against).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

# plan_rebalance's defaults, which the library (livemig.rebalance_fleet) and
# the command line (`livemig rebalance`) use too: kept here, where importing
# them costs nothing (rebalance.py needs numpy), so the three cannot drift.
REBALANCE_THRESHOLD = 0.05
# What one move must gain at least: small, because a move's gain shrinks as
# about 1/hosts (see livemig.planning.rebalance).
REBALANCE_MIN_GAIN = 0.0001
REBALANCE_MAX_MOVES = 50


@dataclasses.dataclass(frozen=True)
class HostCapacity:
    """One host as a planner sees it."""

    name: str
    zone: str
    # Physical size: measured load is held against these.
    cpus: float
    memory_mb: float
    # What the scheduler lets instances allocate (physical size times the
    # host's allocation ratios).
    alloc_vcpus: float
    alloc_memory_mb: float
    # Migrations (in plus out) the host allows at once: a wave never has more.
    max_migrations: int = 1
    # False for a host that takes no placements (disabled, maintenance,
    # standby): it may be a source, never a destination.
    placeable: bool = True
    # The linear power model: idle watts at 0% CPU, peak watts at 100%.
    idle_watts: float = 100.0
    peak_watts: float = 250.0


@dataclasses.dataclass(frozen=True)
class InstanceDemand:
    """One instance: where it is, what it allocated, what it measurably uses."""

    uuid: str
    name: str
    host: str
    vcpus: int
    memory_mb: int
    # Measured over the planner's window; the allocation when no samples exist
    # (`measured` says which).
    cpu_mean: float
    cpu_peak: float
    memory_used_mean_mb: float
    memory_used_peak_mb: float
    measured: bool = False
    # Anti-affinity: no two instances of one group on one host.
    group: str | None = None
    # The hosts it may go to at all (networks, CPU model, storage, zone), as
    # the scheduler's hard filters decide; None means every placeable host.
    allowed_hosts: frozenset[str] | None = None
    # False for an instance that must stay where it is (not running, pinned).
    movable: bool = True


@dataclasses.dataclass(frozen=True)
class Fleet:
    hosts: Mapping[str, HostCapacity]
    instances: Mapping[str, InstanceDemand]  # by uuid


@dataclasses.dataclass(frozen=True)
class Move:
    """One live migration of the plan. Moves of one wave run at once; a wave
    starts when the one before it has ended."""

    instance_uuid: str
    instance_name: str
    source: str
    dest: str
    wave: int
    memory_mb: int
    # True when `dest` is a temporary stop-over: a later move takes the
    # instance on to its final host.
    stop_over: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
    kind: str  # "rebalance" or "consolidate"
    moves: tuple[Move, ...]
    # How it was found: "cp-sat", "first-fit-decreasing", "greedy", ...
    method: str
    # True when the solver proved no plan frees more hosts (consolidate) or
    # the search was exhaustive.
    optimal: bool = False
    # Hosts the plan leaves with no instance (consolidate puts them in standby).
    emptied: tuple[str, ...] = ()
    # The plan's figures, by name (imbalance_before/after, hosts_before/after,
    # lower_bound, watts_before/after, kwh_per_day_saved, memory_to_copy_mb, ...).
    figures: Mapping[str, float] = dataclasses.field(default_factory=dict)
    # Plain sentences an operator should read (why a host could not be
    # emptied, why a move was left out, a stop-over).
    notes: tuple[str, ...] = ()
    # Rebalance: each counted host's normalised load (0.0 idle, 1.0 full) in
    # the plan's metric, before the plan and after it
    # (livemig.planning.bounds.host_loads).
    host_load_before: Mapping[str, float] = dataclasses.field(default_factory=dict)
    host_load_after: Mapping[str, float] = dataclasses.field(default_factory=dict)
