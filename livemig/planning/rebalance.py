"""Spread the load: greedy best-move hill climbing on the imbalance measure
(`livemig.planning.bounds.imbalance`), as Ganeti's hbal does.

Each step takes, among the instances on the most loaded hosts (all of them
on a fleet of up to `SOURCE_HOSTS` hosts) and every destination that may
take them, the single move that lowers the measure most; it keeps it when
it gains at least `min_gain`. Climbing stops when the measure is below
`threshold`, when no move gains enough, or when `max_moves` instances have
left their host. What one move gains shrinks with the fleet (about as
1/hosts: moving 5% of a host's load across a 0.3 gap on 1000 hosts gains
0.0002), hence the small default `min_gain`. A destination must hold the instance when the plan ends
(allocation, and measured peak within its physical size less `headroom`),
take placements, be one the instance may run on, and keep anti-affinity.

The moves are then ordered into waves by `livemig.planning.ordering`; when
that cannot realise them all without stop-overs (which would add moves),
the climb's own sequence is cut into waves instead: every prefix of it
lowers the measure, so the plan still ends lower than it began.
"""
from __future__ import annotations

import numpy as np

from livemig.planning import bounds
from livemig.planning import capacity as cap
from livemig.planning.model import REBALANCE_MAX_MOVES, REBALANCE_MIN_GAIN, REBALANCE_THRESHOLD, Fleet, Plan
from livemig.planning.ordering import final_hosts, order_moves, waves_in_sequence

# A move off a host below the most loaded ones rarely lowers the deviation
# most; looking at these few keeps a step on 1000 hosts in milliseconds.
SOURCE_HOSTS = 16


def plan_rebalance(fleet: Fleet, *, metric: str = "cpu", threshold: float = REBALANCE_THRESHOLD,
                   min_gain: float = REBALANCE_MIN_GAIN, max_moves: int = REBALANCE_MAX_MOVES,
                   use_measured: bool = True, headroom: float = 0.0) -> Plan:
    """The rebalance plan for `fleet` (see the module docstring). Besides
    the figures (imbalance_before, imbalance_after, moves,
    memory_to_copy_mb), `host_load_before` and `host_load_after` hold each
    counted host's normalised load in `metric`."""
    if metric not in bounds.METRICS:
        raise ValueError(f"metric must be one of {', '.join(bounds.METRICS)}, not {metric!r}")
    if max_moves < 0 or min_gain < 0 or threshold < 0:
        raise ValueError("max_moves, min_gain and threshold must be at least 0")
    start = cap.current_hosts(fleet)
    climb = _Climb(fleet, metric, use_measured, headroom)
    steps = climb.run(threshold, min_gain, max_moves)
    target = dict(start)
    for uuid, _, dest in steps:
        target[uuid] = dest
    moves, notes = order_moves(fleet, target, headroom=headroom, use_measured=use_measured)
    if notes or len(moves) > max_moves:
        moves = waves_in_sequence(fleet, steps[:max_moves], headroom=headroom, use_measured=use_measured)
        notes = ("the moves are in the order they were found: another order would need a stop-over",)
    end = final_hosts(fleet, moves)
    figures = {
        "imbalance_before": bounds.imbalance(fleet, start, metric, use_measured),
        "imbalance_after": bounds.imbalance(fleet, end, metric, use_measured),
        "moves": float(len(moves)), "memory_to_copy_mb": float(sum(m.memory_mb for m in moves)),
        "threshold": threshold,
    }
    return Plan(kind="rebalance", moves=moves, method="greedy", figures=figures, notes=notes,
                host_load_before=bounds.host_loads(fleet, start, metric, use_measured),
                host_load_after=bounds.host_loads(fleet, end, metric, use_measured))


class _Climb:
    """The hill climb's state: per counted host its CPU and memory load
    (normalised), the room left in the final state, and the groups there."""

    def __init__(self, fleet: Fleet, metric: str, use_measured: bool, headroom: float) -> None:
        self.fleet = fleet
        self.metric = metric
        self.use_measured = use_measured
        self.hosts = bounds.measured_hosts(fleet)
        self.position = {name: k for k, name in enumerate(self.hosts)}
        self.where = cap.current_hosts(fleet)
        self.origin = dict(self.where)
        self.occupancy = cap.Occupancy.of(fleet, self.where, headroom, use_measured)
        loads = [bounds.host_loads(fleet, self.where, m, use_measured, self.hosts) for m in ("cpu", "memory")]
        self.load = np.array([[loads[0][h], loads[1][h]] for h in self.hosts], dtype=float).reshape(-1, 2)
        sizes = [(fleet.hosts[h].cpus, fleet.hosts[h].memory_mb) if use_measured
                 else (fleet.hosts[h].alloc_vcpus, fleet.hosts[h].alloc_memory_mb) for h in self.hosts]
        self.size = np.array(sizes, dtype=float).reshape(-1, 2)
        self.placeable = np.array([fleet.hosts[h].placeable for h in self.hosts], dtype=bool)
        self.room = np.array([cap.capacity(fleet.hosts[h], headroom, use_measured) for h in self.hosts],
                             dtype=float).reshape(-1, 4)
        self.held = np.array([self.occupancy.load[h] for h in self.hosts], dtype=float).reshape(-1, 4)
        self.weights = {"cpu": (1.0, 0.0), "memory": (0.0, 1.0), "both": (0.5, 0.5)}[metric]

    def measure(self, total: np.ndarray, squares: np.ndarray) -> np.ndarray:
        """The imbalance from the sums of the loads and of their squares over
        the counted hosts (... x 2: CPU, memory)."""
        n = len(self.hosts)
        variance = np.maximum(squares / n - (total / n) ** 2, 0.0)
        deviation = np.sqrt(variance)
        return deviation[..., 0] * self.weights[0] + deviation[..., 1] * self.weights[1]

    def current(self) -> float:
        return float(self.measure(self.load.sum(axis=0), (self.load ** 2).sum(axis=0))) if self.hosts else 0.0

    def used(self, uuid: str) -> np.ndarray:
        instance = self.fleet.instances[uuid]
        if self.use_measured:
            return np.array([instance.cpu_mean, instance.memory_used_mean_mb])
        return np.array([float(instance.vcpus), float(instance.memory_mb)])

    def destinations(self, uuid: str) -> np.ndarray:
        """Which counted hosts may take `uuid` now, as a mask."""
        instance = self.fleet.instances[uuid]
        ok = self.placeable.copy()
        ok[self.position[self.where[uuid]]] = False
        if instance.allowed_hosts is not None:
            ok &= np.array([h in instance.allowed_hosts for h in self.hosts])
        if instance.group is not None:
            ok &= np.array([not self.occupancy.groups[h].get(instance.group) for h in self.hosts])
        need = np.array(self.occupancy.demand(uuid))
        ok &= np.all(self.held + need <= self.room + cap.EPSILON, axis=1)
        return ok

    def best_move(self, candidates: list[str]) -> tuple[float, str, str] | None:
        """The move among `candidates` that leaves the lowest measure."""
        best = None
        for uuid in candidates:
            ok = self.destinations(uuid)
            if not ok.any():
                continue
            source = self.position[self.where[uuid]]
            share = self.used(uuid) / self.size  # hosts x 2: the load it would put on each host
            # Only the source's and the destination's loads change, so the
            # sums change by two terms each: every destination at once.
            leaves = self.load[source] - share[source]
            total = self.load.sum(axis=0) - share[source] + share
            squares = ((self.load ** 2).sum(axis=0) - self.load[source] ** 2 + leaves ** 2
                       - self.load ** 2 + (self.load + share) ** 2)
            values = np.where(ok, self.measure(total, squares), np.inf)
            k = int(values.argmin())
            if best is None or values[k] < best[0] - 1e-12:
                best = (float(values[k]), uuid, self.hosts[k])
        return best

    def apply(self, uuid: str, dest: str) -> None:
        source = self.where[uuid]
        share = self.used(uuid) / self.size
        self.load[self.position[source]] -= share[self.position[source]]
        self.load[self.position[dest]] += share[self.position[dest]]
        need = np.array(self.occupancy.demand(uuid))
        self.held[self.position[source]] -= need
        self.held[self.position[dest]] += need
        self.occupancy.release(uuid, source)
        self.occupancy.hold(uuid, dest)
        self.where[uuid] = dest

    def candidates(self, moved: int, max_moves: int) -> list[str]:
        """Movable instances on the most loaded hosts; once `max_moves`
        instances have left their host, only those may move again."""
        combined = self.load @ np.array(self.weights)
        top = {self.hosts[k] for k in np.argsort(-combined, kind="stable")[:SOURCE_HOSTS]}
        chosen = sorted(uuid for uuid, host in self.where.items()
                        if host in top and self.fleet.instances[uuid].movable)
        if moved >= max_moves:
            chosen = [uuid for uuid in chosen if self.where[uuid] != self.origin[uuid]]
        return chosen

    def run(self, threshold: float, min_gain: float, max_moves: int) -> list[tuple[str, str, str]]:
        """The climb: (uuid, source, dest) per step, in order."""
        steps: list[tuple[str, str, str]] = []
        current = self.current()
        # Every step gains at least min_gain (or a hair), so this only guards min_gain=0.
        for _ in range(max(1, 4 * max_moves)):
            if current < threshold:
                break
            moved = sum(1 for uuid in self.where if self.where[uuid] != self.origin[uuid])
            best = self.best_move(self.candidates(moved, max_moves))
            if best is None or current - best[0] < max(min_gain, 1e-9):
                break
            value, uuid, dest = best
            steps.append((uuid, self.where[uuid], dest))
            self.apply(uuid, dest)
            current = value
        return steps
