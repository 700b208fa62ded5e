"""Pack a fleet's instances onto as few hosts as possible.

`plan_consolidation` finds where each instance should end up, then
`livemig.planning.ordering` makes that an executable plan.

Constraints: allocations fit each host's allocation capacity; with
`use_measured`, measured peak CPU and memory fit (1 - headroom) of its
physical size; anti-affinity groups, `allowed_hosts` and unmovable
instances are kept; a host that takes no placements receives nothing (its
instances may stay or leave). Objective, in this order: fewest hosts used,
then fewest moves, then least memory to copy.

Method: OR-Tools CP-SAT when the fleet is small enough to solve within the
time limit (at most `CP_SAT_MAX_PAIRS` instance-host pairs), in two passes
(fewest hosts; then, with that number fixed, fewest moves and least
memory), started from the heuristic's answer; the first-fit-decreasing
packer below above that, or when CP-SAT finds nothing better. `optimal` is
True when CP-SAT proved the number of hosts minimal, or when the plan uses
as many hosts as the lower bound (then nothing can use fewer, whichever
method found it); `method` says which found the plan.

The heuristic keeps k hosts (those holding an unmovable instance, then
the others largest first, or fullest first: both are tried): instances
on kept hosts stay, the others are packed onto the kept hosts by best-fit
decreasing, with a repair step that makes room by moving one instance
from a kept host to another; the smallest k that packs (and keeps within
`max_moves`) is found by bisection between the lower bound and the hosts
in use.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from livemig.planning import bounds
from livemig.planning import capacity as cap
from livemig.planning.model import Fleet, Plan
from livemig.planning.ordering import final_hosts, order_moves

# Instance-host pairs (CP-SAT's boolean variables) up to which CP-SAT is tried.
# benchmarks/planners.py measured where it pays (benchmarks/README.md, section
# 10), and that depends on the CPU its wall-clock limit buys: with about 1 CPU
# second (the default 10 s on a machine loaded 10 times over) it found fewer
# hosts or moves than the heuristic on every fleet up to 1,720 pairs and on
# none from 5,540 up; with up to 8 CPU seconds (about what 10 s gives on an
# idle machine), on every fleet up to 8,750 pairs and on none from 11,830 up
# (to 34,000, the largest tried), where it only adds its time to a heuristic
# that takes a tenth of a second. 5,000 is between the two.
CP_SAT_MAX_PAIRS = 5_000
# CP-SAT works on integers: measured CPU is counted in thousandths of a core.
CPU_SCALE = 1000


def plan_consolidation(fleet: Fleet, *, headroom: float = 0.0, use_measured: bool = True,
                       time_limit_s: float = 10.0, max_moves: int | None = None, method: str = "auto") -> Plan:
    """The consolidation plan for `fleet` (see the module docstring); its
    `emptied` hosts hold nothing at the end and can go to standby (hosts that
    take placements and held nothing already are among them). `method`
    "cp-sat" or "first-fit-decreasing" forces one (for comparisons); "auto"
    chooses by size."""
    if method not in ("auto", "cp-sat", "first-fit-decreasing"):
        raise ValueError(f"method must be auto, cp-sat or first-fit-decreasing, not {method!r}")
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be in [0, 1), not {headroom}")
    if max_moves is not None and max_moves < 0:
        raise ValueError(f"max_moves must be at least 0, not {max_moves}")
    start = cap.current_hosts(fleet)
    lower = bounds.lower_bound(fleet, headroom, use_measured)
    target, notes = pack_first_fit_decreasing(fleet, headroom, use_measured, max_moves, lower)
    candidates = [(target, "first-fit-decreasing", False, tuple(notes))]
    if fleet.instances and (method == "cp-sat" or (method == "auto" and _pairs(fleet) <= CP_SAT_MAX_PAIRS)):
        solved = solve_cp_sat(fleet, headroom, use_measured, time_limit_s, max_moves, lower, hint=target)
        if solved is not None:
            candidates.insert(0, (solved[0], "cp-sat", solved[1], ()))
    # The best target whose moves can all be ordered; a target whose moves
    # deadlock with no stop-over loses to one that is realised in full.
    realised = [_realise(fleet, start, *candidate, headroom=headroom, use_measured=use_measured,
                         max_moves=max_moves, lower=lower) for candidate in candidates]
    return min(realised, key=lambda plan: _achieved(fleet, start, plan, headroom, use_measured))


def _realise(fleet: Fleet, start: Mapping[str, str], target: Mapping[str, str], method: str, proven: bool,
             notes: tuple[str, ...], *, headroom: float, use_measured: bool, max_moves: int | None,
             lower: int) -> Plan:
    """The plan that takes the fleet to `target`, with its figures."""
    moves, order_notes = order_moves(fleet, target, headroom=headroom, use_measured=use_measured)
    if max_moves is not None and len(moves) > max_moves:
        # Stop-overs can add moves; any prefix of a valid plan is valid.
        order_notes += (f"the plan is cut to {max_moves} moves: stop-overs made it longer",)
        moves = moves[:max_moves]
    end = final_hosts(fleet, moves)
    used_after = set(end.values())
    emptied = tuple(sorted(name for name, host in fleet.hosts.items()
                           if name not in used_after and (host.placeable or name in start.values())))
    watts_before = bounds.watts(fleet, start)
    watts_after = bounds.watts(fleet, end, standby=emptied)
    figures = {
        "hosts_before": float(len(set(start.values()))), "hosts_after": float(len(used_after)),
        "lower_bound": float(lower), "moves": float(len(moves)),
        "memory_to_copy_mb": float(sum(m.memory_mb for m in moves)),
        "watts_before": watts_before, "watts_after": watts_after,
        "kwh_per_day_saved": bounds.kwh_per_day(watts_before - watts_after),
    }
    crowded = cap.crowded_hosts(fleet, end, headroom, use_measured)
    if crowded:
        order_notes += (f"still over capacity or breaking anti-affinity at the end: {', '.join(crowded)}",)
    optimal = not crowded and ((proven and end == target) or len(used_after) <= lower)
    return Plan(kind="consolidate", moves=moves, method=method, optimal=optimal, emptied=emptied,
                figures=figures, notes=notes + order_notes)


def _achieved(fleet: Fleet, start: Mapping[str, str], plan: Plan, headroom: float, use_measured: bool) -> tuple:
    """How good a realised plan is: fewest hosts left crowded, then the objective."""
    end = final_hosts(fleet, plan.moves)
    crowded = cap.crowded_hosts(fleet, end, headroom, use_measured)
    return (len(crowded), *_cost(fleet, start, end), len(plan.moves))


def _pairs(fleet: Fleet) -> int:
    return len(fleet.instances) * len(fleet.hosts)


def _cost(fleet: Fleet, start: Mapping[str, str], target: Mapping[str, str]) -> tuple[int, int, int]:
    """The objective, to compare two targets: hosts used, moves, memory moved."""
    moved = [uuid for uuid in target if target[uuid] != start[uuid]]
    return (len(set(target.values())), len(moved), sum(fleet.instances[u].memory_mb for u in moved))


def pack_first_fit_decreasing(fleet: Fleet, headroom: float, use_measured: bool, max_moves: int | None,
                              lower: int) -> tuple[dict[str, str], list[str]]:
    """The heuristic (see the module docstring), keeping the largest hosts
    first and then the fullest first: the better target (hosts, moves,
    memory), and notes when nothing packs."""
    start = cap.current_hosts(fleet)
    packed = [_pack_kept_prefix(fleet, start, _keep_order(fleet, start, headroom, use_measured, largest_first),
                                headroom, use_measured, max_moves, lower) for largest_first in (True, False)]
    found = [target for target in packed if target is not None]
    if found:
        return min(found, key=lambda target: _cost(fleet, start, target)), []
    # Nothing packs (a host is over capacity and its instances fit nowhere
    # else, or max_moves is too small): everything stays.
    return dict(start), ["no packing frees a host within the constraints: nothing moves"]


def _pack_kept_prefix(fleet: Fleet, start: Mapping[str, str], order: Sequence[str], headroom: float,
                      use_measured: bool, max_moves: int | None, lower: int) -> dict[str, str] | None:
    """The packing onto the shortest prefix of `order` that holds every
    instance (within `max_moves`), found by bisection; None if none does."""
    forced = {i.host for i in fleet.instances.values() if not i.movable}
    low, high = max(lower, len(forced), 1), len(order)
    best: dict[str, str] | None = None
    while low <= high:
        k = (low + high) // 2
        packed = _pack_onto(fleet, start, order[:k], headroom, use_measured)
        if packed is not None and (max_moves is None or _moves(start, packed) <= max_moves):
            best, high = packed, k - 1
        else:
            low = k + 1
    return best


def _moves(start: Mapping[str, str], target: Mapping[str, str]) -> int:
    return sum(1 for uuid, host in target.items() if start[uuid] != host)


def _keep_order(fleet: Fleet, start: Mapping[str, str], headroom: float, use_measured: bool,
                largest_first: bool) -> list[str]:
    """Usable hosts in the order they are kept: those holding an unmovable
    instance, then those that take placements; then larger first (fewer
    hosts) and fullest first (fewer moves), in the order `largest_first` says."""
    forced = {i.host for i in fleet.instances.values() if not i.movable}
    occupancy = cap.Occupancy.of(fleet, start, headroom, use_measured)

    def key(name: str) -> tuple:
        host = fleet.hosts[name]
        size = (-host.memory_mb, -host.cpus)
        fill = (-_fill(occupancy.load[name], occupancy.room[name]),)
        return (name not in forced, not host.placeable, *(size + fill if largest_first else fill + size), name)

    return sorted(bounds.measured_hosts(fleet), key=key)


def _fill(load: cap.Vector, room: cap.Vector) -> float:
    """How full a host is: its fullest resource."""
    return max((used / size if size > 0 and math.isfinite(size) else 0.0) for used, size in zip(load, room))


def _pack_onto(fleet: Fleet, start: Mapping[str, str], kept: Sequence[str], headroom: float,
               use_measured: bool) -> dict[str, str] | None:
    """Every instance on one of `kept` (those already there stay), or None."""
    keep = set(kept)
    occupancy = cap.Occupancy(fleet, headroom, use_measured)
    target: dict[str, str] = {}
    homeless = []
    for uuid in cap.sorted_uuids(fleet):
        host = start[uuid]
        if host in keep and (not fleet.instances[uuid].movable or _fits_home(occupancy, uuid, host)):
            occupancy.hold(uuid, host)
            target[uuid] = host
        elif not fleet.instances[uuid].movable:
            return None
        else:
            homeless.append(uuid)
    index = _FreeMemoryIndex(occupancy, [h for h in kept if fleet.hosts[h].placeable])
    for uuid in homeless:
        dest = index.best_fit(uuid) or _repair(occupancy, index, target, uuid)
        if dest is None:
            return None
        occupancy.hold(uuid, dest)
        index.update(dest)
        target[uuid] = dest
    return target


def _fits_home(occupancy: cap.Occupancy, uuid: str, host: str) -> bool:
    """Whether `uuid` can stay on `host` with what already stays there: the
    same test as a placement, less `placeable` and `allowed_hosts` (staying
    is not a placement)."""
    group = occupancy.fleet.instances[uuid].group
    if group is not None and occupancy.groups[host].get(group):
        return False
    return cap.fits(cap.add(occupancy.load[host], occupancy.demand(uuid)), occupancy.room[host])


class _FreeMemoryIndex:
    """The destination hosts sorted by free allocatable memory, so best fit
    takes the host with just enough memory first; and their loads as one
    array, so it tests every host's capacity at once instead of asking
    `Occupancy.can_take` host after host (on a thousand hosts, the test of
    one host at a time was most of a consolidation's time)."""

    def __init__(self, occupancy: cap.Occupancy, hosts: Sequence[str]) -> None:
        self.occupancy = occupancy
        self.keys = sorted((self._key(h), h) for h in hosts)
        self.names = sorted(hosts)  # by name, so a position is also the tie-break rank
        self.position = {h: k for k, h in enumerate(self.names)}
        self.room = np.array([occupancy.room[h] for h in self.names], dtype=float).reshape(-1, 4)
        # The loads as of each host's last `update`, as `keys` has them.
        self.load = np.array([occupancy.load[h] for h in self.names], dtype=float).reshape(-1, 4)

    def _key(self, host: str) -> float:
        return self.occupancy.free(host)[1]

    def best_fit(self, uuid: str, exclude: str | None = None) -> str | None:
        """The host with the least free memory, then the first by name, that
        takes `uuid`: the same host as scanning `keys` from the first with
        enough memory, asking `can_take` of each."""
        return self.best_fits([uuid], exclude)(0)

    def best_fits(self, uuids: Sequence[str], exclude: str | None = None) -> Callable[[int], str | None]:
        """`best_fit(uuids[k], exclude)` for any k, the capacity test of all
        of them done at once; valid while no host but `exclude` changes."""
        if not self.names or not uuids:
            return lambda k: None
        demands = np.array([self.occupancy.demand(u) for u in uuids], dtype=float).reshape(-1, 1, 4)
        free_memory = self.room[:, 1] - self.load[:, 1]
        # Capacity as `capacity.fits` computes it; `can_take` has the rest
        # (placeable, allowed hosts, anti-affinity) for the few that pass.
        room = np.all(self.load + demands <= self.room + cap.EPSILON, axis=2)
        room &= free_memory >= demands[:, :, 1] - cap.EPSILON
        if exclude in self.position:
            room[:, self.position[exclude]] = False

        def choose(k: int) -> str | None:
            candidates = np.nonzero(room[k])[0]
            for position in candidates[np.lexsort((candidates, free_memory[candidates]))]:
                host = self.names[position]
                if self.occupancy.can_take(uuids[k], host):
                    return host
            return None

        return choose

    def update(self, host: str) -> None:
        for position, (_, name) in enumerate(self.keys):
            if name == host:
                del self.keys[position]
                break
        bisect.insort(self.keys, (self._key(host), host))
        self.load[self.position[host]] = self.occupancy.load[host]


def _repair(occupancy: cap.Occupancy, index: _FreeMemoryIndex, target: dict[str, str], uuid: str) -> str | None:
    """Room for `uuid` made by moving one instance already placed on a kept
    host to another kept host; the host made room on, or None."""
    by_host: dict[str, list[str]] = {}
    for other, host in target.items():
        if occupancy.fleet.instances[other].movable:
            by_host.setdefault(host, []).append(other)
    for _, host in reversed(index.keys):
        if not cap.may_receive(occupancy.fleet.hosts[host], occupancy.fleet.instances[uuid]):
            continue
        others = by_host.get(host, [])
        elsewhere_for = None  # where each of `others` would go, once one makes room
        for k, other in enumerate(others):
            occupancy.release(other, host)
            if occupancy.can_take(uuid, host):
                occupancy.hold(uuid, host)
                if elsewhere_for is None:
                    elsewhere_for = index.best_fits(others, exclude=host)
                elsewhere = elsewhere_for(k)
                occupancy.release(uuid, host)
                if elsewhere is not None:
                    occupancy.hold(other, elsewhere)
                    index.update(elsewhere)
                    index.update(host)
                    target[other] = elsewhere
                    return host
            occupancy.hold(other, host)
    return None


def solve_cp_sat(fleet: Fleet, headroom: float, use_measured: bool, time_limit_s: float,
                 max_moves: int | None, lower: int,
                 hint: Mapping[str, str] | None = None) -> tuple[dict[str, str], bool] | None:
    """The CP-SAT packing (see the module docstring): a target host per
    instance and whether the number of hosts is proven minimal; None when
    CP-SAT finds no packing in the time limit."""
    from ortools.sat.python import cp_model

    start = cap.current_hosts(fleet)
    model = cp_model.CpModel()
    choices: dict[str, dict[str, cp_model.IntVar]] = {}
    for uuid in sorted(fleet.instances):
        instance = fleet.instances[uuid]
        hosts = [instance.host] if not instance.movable else sorted(
            h for h in fleet.hosts if h == instance.host or cap.may_receive(fleet.hosts[h], instance))
        choices[uuid] = {h: model.new_bool_var(f"x_{uuid}_{h}") for h in hosts}
        model.add_exactly_one(choices[uuid].values())
    used = {h: model.new_bool_var(f"y_{h}") for h in sorted(fleet.hosts)}
    scale = (1, 1, CPU_SCALE, 1)
    for h in sorted(fleet.hosts):
        on_h = [(uuid, var[h]) for uuid, var in choices.items() if h in var]
        for _, var in on_h:
            model.add_implication(var, used[h])
        room = cap.capacity(fleet.hosts[h], headroom, use_measured)
        for r in range(len(cap.RESOURCES)):
            if not math.isfinite(room[r]):
                continue
            terms = [(math.ceil(cap.demand(fleet.instances[u], use_measured)[r] * scale[r] - 1e-9), v) for u, v in on_h]
            terms = [(d, v) for d, v in terms if d > 0]
            if terms:
                model.add(sum(d * v for d, v in terms) <= math.floor(room[r] * scale[r] + 1e-9) * used[h])
    groups: dict[str, list[str]] = {}
    for uuid, instance in fleet.instances.items():
        if instance.group is not None:
            groups.setdefault(instance.group, []).append(uuid)
    for members in groups.values():
        for h in fleet.hosts:
            on_h = [choices[u][h] for u in members if h in choices[u]]
            if len(on_h) > 1:
                pinned = sum(1 for u in members if not fleet.instances[u].movable and fleet.instances[u].host == h)
                model.add(sum(on_h) <= max(1, pinned))
    moved = [1 - choices[u][start[u]] for u in sorted(choices)]
    if max_moves is not None:
        model.add(sum(moved) <= max_moves)
    hosts_used = sum(used.values())
    model.add(hosts_used >= lower)
    if hint:
        for uuid, var in choices.items():
            for h, x in var.items():
                model.add_hint(x, hint.get(uuid) == h)
        for h, y in used.items():
            model.add_hint(y, h in set(hint.values()))

    solver = cp_model.CpSolver()
    # One worker and a deterministic time limit: the same fleet gives the same
    # plan, unless the wall-clock cap (for a loaded machine) cuts it first.
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    solver.parameters.max_deterministic_time = time_limit_s / 2
    solver.parameters.max_time_in_seconds = time_limit_s / 2

    model.minimize(hosts_used)
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    proven = status == cp_model.OPTIMAL
    best_hosts = round(solver.objective_value)
    first = _solution(solver, choices)

    # With the number of hosts fixed: fewest moves, then least memory.
    model.clear_objective()
    model.add(hosts_used <= best_hosts)
    model.clear_hints()
    for uuid, var in choices.items():
        for h, x in var.items():
            model.add_hint(x, first[uuid] == h)
    memory = [fleet.instances[u].memory_mb for u in sorted(choices)]
    weight = sum(memory) + 1
    model.minimize(sum((weight + m) * x for m, x in zip(memory, moved)))
    status = solver.solve(model)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return _solution(solver, choices), proven
    return first, proven


def _solution(solver, choices: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    return {uuid: next(h for h, x in var.items() if solver.value(x)) for uuid, var in choices.items()}
