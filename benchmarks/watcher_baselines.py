"""Two baselines for the planner benchmark, written from OpenStack Watcher's
strategies (watcher/decision_engine/strategy/strategies/): what livemig's
planners are measured against. Benchmark code, not product code.

Both see the fleet through livemig's model, so they are held to the same
rules as livemig's planners: an instance "fits" a host when
`livemig.planning.capacity.Occupancy.can_take` says so (allocation, and
measured peak within the physical size less the headroom, anti-affinity,
`allowed_hosts`, `placeable`); only movable instances move.

`watcher_consolidation` follows `vm_workload_consolidation`:
1. offload: hosts by measured CPU, most loaded first; each one that is
   overloaded (Watcher: CPU in use above its cores; here: its load does not
   fit its capacity, the same test in livemig's four resources) sends its
   instances, least CPU first, each to the most loaded host that fits,
   until it is no longer overloaded;
2. consolidation: hosts sorted by measured CPU once; from the least loaded
   host up, each instance (most CPU first) goes to the most loaded host
   that fits, among the hosts above it in that order;
3. optimize_solution: an instance moved more than once gets one move from
   its first source to its last destination, appended at the end of the
   list (A->B, B->A disappear);
4. the hosts left empty are disabled.

`watcher_stabilization` follows `workload_stabilization` with
`host_choice=fullsearch`:
1. if the imbalance (livemig's measure: standard deviation of normalised
   host load; Watcher's weighted sum of per-metric deviations is the same
   measure up to a factor) is above the threshold, simulate every move of
   every instance to every other host from the starting state; for each
   instance, record each destination that beats the best seen so far for
   it (the first against the current imbalance); sort all records by the
   imbalance they leave;
2. walk the sorted records: apply one when, from the current state, it
   leaves an imbalance below the lowest reached so far (Watcher starts
   that at 1); stop once a record's imbalance is below the threshold.
Watcher checks only the destination's disk there; Nova's scheduler would
refuse a destination without room when the action runs, so a record whose
destination cannot take the instance now is skipped, as is one whose
instance has already moved (Watcher's model would refuse that migration).

Watcher's weight planner then runs the migrations two at a time
(`parallelization: migrate: 2`), in the order of the solution.
`applier_plan` builds that plan and `sequential_plan` the same moves one at
a time; `livemig.planning.ordering.check_plan` says whether each can run
(a migration holds room on both hosts until it ends).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from livemig.planning import bounds
from livemig.planning import capacity as cap
from livemig.planning.model import Fleet, Move, Plan

# Watcher's weight planner: migrations run this many at a time.
WATCHER_PARALLEL_MIGRATIONS = 2

Step = tuple[str, str, str]  # (instance uuid, source, destination)


@dataclasses.dataclass(frozen=True)
class BaselineResult:
    kind: str  # "consolidate" or "rebalance"
    steps: tuple[Step, ...]  # the solution's migrations, in its order
    where: Mapping[str, str]  # each instance's host at the end
    disabled: tuple[str, ...] = ()  # consolidation: hosts left empty


class _State:
    """Per counted host, in numpy: the four-resource load held there and the
    room; and the occupancy that decides a fit in full."""

    def __init__(self, fleet: Fleet, headroom: float, use_measured: bool) -> None:
        self.fleet = fleet
        self.hosts = bounds.measured_hosts(fleet)
        self.index = {h: k for k, h in enumerate(self.hosts)}
        self.where = cap.current_hosts(fleet)
        self.occupancy = cap.Occupancy.of(fleet, self.where, headroom, use_measured)
        self.room = np.array([self.occupancy.room[h] for h in self.hosts], dtype=float).reshape(-1, 4)
        self.held = np.array([self.occupancy.load[h] for h in self.hosts], dtype=float).reshape(-1, 4)
        self.on: dict[str, list[str]] = {h: [] for h in self.hosts}
        for uuid in sorted(fleet.instances):
            self.on[self.where[uuid]].append(uuid)
        self.steps: list[Step] = []

    def fitting(self, uuid: str) -> np.ndarray:
        """Hosts whose room takes `uuid`'s demand now, as a mask (the
        capacity part of the test only: `fits` has the rest)."""
        need = np.array(self.occupancy.demand(uuid))
        return np.all(self.held + need <= self.room + cap.EPSILON, axis=1)

    def fits(self, uuid: str, host: str) -> bool:
        return host != self.where[uuid] and self.occupancy.can_take(uuid, host)

    def overloaded(self, host: str) -> bool:
        return not cap.fits(self.occupancy.load[host], self.occupancy.room[host])

    def migrate(self, uuid: str, dest: str) -> None:
        source = self.where[uuid]
        need = np.array(self.occupancy.demand(uuid))
        self.held[self.index[source]] -= need
        self.held[self.index[dest]] += need
        self.occupancy.release(uuid, source)
        self.occupancy.hold(uuid, dest)
        self.on[source].remove(uuid)
        self.on[dest].append(uuid)
        self.where[uuid] = dest
        self.steps.append((uuid, source, dest))

    def positions(self, order: Sequence[str]) -> np.ndarray:
        return np.array([self.index[h] for h in order], dtype=int)

    def first_fitting(self, uuid: str, order: Sequence[str], positions: np.ndarray,
                      candidates: np.ndarray) -> str | None:
        """The first host of `candidates` (positions in `order`, in the order
        tried; `positions` maps them to host indices) that takes `uuid`."""
        if len(candidates) == 0:
            return None
        fitting = self.fitting(uuid)[positions[candidates]]
        for k in candidates[np.nonzero(fitting)[0]]:
            if self.fits(uuid, order[k]):
                return order[k]
        return None


def _cpu_used(fleet: Fleet, state: _State, host: str) -> float:
    """Watcher's node CPU utilisation: the cores its instances use (mean)."""
    return sum(fleet.instances[u].cpu_mean for u in state.on[host])


def watcher_consolidation(fleet: Fleet, headroom: float = 0.0, use_measured: bool = True) -> BaselineResult:
    """The vm_workload_consolidation baseline (see the module docstring)."""
    state = _State(fleet, headroom, use_measured)
    cpu = {uuid: instance.cpu_mean for uuid, instance in fleet.instances.items()}

    def movable(uuids: Sequence[str]) -> list[str]:
        return [u for u in uuids if fleet.instances[u].movable]

    # Offload phase.
    order = sorted(state.hosts, key=lambda h: _cpu_used(fleet, state, h))
    positions = state.positions(order)
    most_loaded_first = np.arange(len(order))[::-1]
    for node in reversed(order):
        if not state.overloaded(node):
            continue
        for uuid in sorted(movable(state.on[node]), key=lambda u: cpu[u]):
            dest = state.first_fitting(uuid, order, positions, most_loaded_first)
            if dest is not None:
                state.migrate(uuid, dest)
            if not state.overloaded(node):
                break

    # Consolidation phase.
    order = sorted(state.hosts, key=lambda h: _cpu_used(fleet, state, h))
    positions = state.positions(order)
    for asc, node in enumerate(order):
        for uuid in sorted(movable(state.on[node]), key=lambda u: cpu[u], reverse=True):
            dest = state.first_fitting(uuid, order, positions, np.arange(len(order) - 1, asc, -1))
            if dest is not None:
                state.migrate(uuid, dest)

    steps = _collapse_chains(state.steps)
    used = set(state.where.values())
    disabled = tuple(h for h in state.hosts if h not in used)
    return BaselineResult("consolidate", steps, dict(state.where), disabled)


def _collapse_chains(steps: Sequence[Step]) -> tuple[Step, ...]:
    """Watcher's optimize_solution: an instance moved more than once gets
    one move, first source to last destination, at the end of the list;
    none when it ends where it began."""
    count: dict[str, int] = {}
    for uuid, _, _ in steps:
        count[uuid] = count.get(uuid, 0) + 1
    kept = [step for step in steps if count[step[0]] == 1]
    first: dict[str, str] = {}
    last: dict[str, str] = {}
    for uuid, source, dest in steps:
        if count[uuid] > 1:
            first.setdefault(uuid, source)
            last[uuid] = dest
    kept += [(uuid, first[uuid], last[uuid]) for uuid in first if first[uuid] != last[uuid]]
    return tuple(kept)


def watcher_stabilization(fleet: Fleet, metric: str = "cpu", threshold: float = 0.05, headroom: float = 0.0,
                          use_measured: bool = True) -> BaselineResult:
    """The workload_stabilization baseline (see the module docstring)."""
    if metric not in bounds.METRICS:
        raise ValueError(f"metric must be one of {', '.join(bounds.METRICS)}, not {metric!r}")
    state = _State(fleet, headroom, use_measured)
    hosts = state.hosts
    n = len(hosts)
    weights = np.array({"cpu": (1.0, 0.0), "memory": (0.0, 1.0), "both": (0.5, 0.5)}[metric])
    cpu_load = bounds.host_loads(fleet, state.where, "cpu", use_measured, hosts)
    memory_load = bounds.host_loads(fleet, state.where, "memory", use_measured, hosts)
    load = np.array([[cpu_load[h], memory_load[h]] for h in hosts], dtype=float).reshape(-1, 2)
    sizes = np.array([(fleet.hosts[h].cpus, fleet.hosts[h].memory_mb) if use_measured
                      else (fleet.hosts[h].alloc_vcpus, fleet.hosts[h].alloc_memory_mb) for h in hosts],
                     dtype=float).reshape(-1, 2)

    def used(uuid: str) -> np.ndarray:
        instance = fleet.instances[uuid]
        if use_measured:
            return np.array([instance.cpu_mean, instance.memory_used_mean_mb])
        return np.array([float(instance.vcpus), float(instance.memory_mb)])

    def measure(total: np.ndarray, squares: np.ndarray) -> np.ndarray:
        deviation = np.sqrt(np.maximum(squares / n - (total / n) ** 2, 0.0))
        return deviation[..., 0] * weights[0] + deviation[..., 1] * weights[1]

    placeable = np.array([fleet.hosts[h].placeable for h in hosts], dtype=bool)
    sums = [load.sum(axis=0), (load ** 2).sum(axis=0)]  # kept up to date as moves apply

    def after_every_move(uuid: str, source: int) -> np.ndarray:
        """The imbalance after moving `uuid` from `source` to each host:
        only two hosts' loads change, so the sums change by two terms."""
        share = used(uuid) / sizes
        leaves = load[source] - share[source]
        total = sums[0] - share[source] + share
        squares = sums[1] - load[source] ** 2 + leaves ** 2 - load ** 2 + (load + share) ** 2
        return measure(total, squares)

    def after_move(uuid: str, source: int, dest: int) -> tuple[float, np.ndarray, np.ndarray]:
        """The imbalance after one move, and the two hosts' loads then."""
        share = used(uuid) / sizes
        leaves, arrives = load[source] - share[source], load[dest] + share[dest]
        total = sums[0] - share[source] + share[dest]
        squares = sums[1] - load[source] ** 2 + leaves ** 2 - load[dest] ** 2 + arrives ** 2
        return float(measure(total, squares)), leaves, arrives

    if n < 2:
        return BaselineResult("rebalance", (), dict(state.where))
    current = float(measure(*sums))
    if current <= threshold:
        return BaselineResult("rebalance", (), dict(state.where))

    # Simulate every move from the starting state.
    records: list[tuple[float, str, str, str]] = []
    for source, src in enumerate(hosts):
        for uuid in state.on[src]:
            if not fleet.instances[uuid].movable:
                continue
            values = after_every_move(uuid, source)
            values[source] = np.inf  # the other hosts that take placements only
            values[~placeable] = np.inf
            best_before = np.minimum.accumulate(np.concatenate(([current], values)))[:-1]
            for k in np.nonzero(values < best_before)[0]:
                records.append((float(values[k]), uuid, src, hosts[k]))
    records.sort(key=lambda record: record[0])

    # Apply them while they lower the lowest imbalance reached.
    lowest = 1.0
    for _, uuid, src, dst in records:
        if state.where[uuid] != src or not state.fits(uuid, dst):
            continue
        source, dest = state.index[src], state.index[dst]
        value, leaves, arrives = after_move(uuid, source, dest)
        if value < lowest:
            lowest = value
            sums[0] += leaves + arrives - load[source] - load[dest]
            sums[1] += leaves ** 2 + arrives ** 2 - load[source] ** 2 - load[dest] ** 2
            load[source], load[dest] = leaves, arrives
            state.migrate(uuid, dst)
        if value < threshold:
            break
    return BaselineResult("rebalance", tuple(state.steps), dict(state.where))


def applier_plan(fleet: Fleet, result: BaselineResult,
                 parallel: int = WATCHER_PARALLEL_MIGRATIONS) -> Plan:
    """The baseline's moves as Watcher's weight planner runs them: `parallel`
    at a time, in the solution's order."""
    moves = tuple(Move(instance_uuid=uuid, instance_name=fleet.instances[uuid].name, source=source, dest=dest,
                       wave=k // parallel + 1, memory_mb=fleet.instances[uuid].memory_mb)
                  for k, (uuid, source, dest) in enumerate(result.steps))
    return Plan(kind=result.kind, moves=moves, method=f"watcher-{result.kind}", emptied=result.disabled)


def sequential_plan(fleet: Fleet, result: BaselineResult) -> Plan:
    """The baseline's moves one at a time, in the solution's order."""
    return applier_plan(fleet, result, parallel=1)
