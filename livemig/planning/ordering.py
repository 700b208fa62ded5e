"""From where each instance should end up to moves that can run, wave after
wave, and the check that a plan can.

The rules a plan keeps at every step (Watcher leaves this "migration
ordering" unsolved and can plan moves that only fit in another order):
- a live migration holds room on both hosts until it ends, so during a
  wave a host carries what it held when the wave began plus everything
  migrating in; that must fit its capacity (`livemig.planning.capacity`);
- no two instances of an anti-affinity group are on one host, counting an
  instance on both hosts while it migrates;
- a wave has at most `max_migrations` moves (in plus out) on each host;
- only movable instances move, only to hosts that take placements and that
  the instance may run on, from the host it is on at that point.

Moves that block each other (a swap between two full hosts) are broken
with a temporary stop-over on a third host with room; when there is none
the move is left out and a note says why.
"""
from __future__ import annotations

import collections
from typing import Iterable, Mapping, Sequence

from livemig.planning import capacity as cap
from livemig.planning.model import Fleet, Move, Plan


def order_moves(fleet: Fleet, target: Mapping[str, str], *, headroom: float = 0.0, use_measured: bool = True,
                order: Sequence[str] | None = None) -> tuple[tuple[Move, ...], tuple[str, ...]]:
    """Waved moves that take each instance (by uuid) to `target[uuid]`
    (instances not in `target` stay), and notes on moves left out or broken
    with a stop-over. `order` is the preference among moves that could start
    in the same wave (default: largest first)."""
    where = cap.current_hosts(fleet)
    occupancy = cap.Occupancy.of(fleet, where, headroom, use_measured)
    notes: list[str] = []
    pending = []
    for uuid in (cap.sorted_uuids(fleet, target) if order is None else order):
        if target.get(uuid, where[uuid]) == where[uuid]:
            continue
        why = _never(fleet, uuid, target[uuid])
        if why:
            notes.append(_left_out(fleet, uuid, where[uuid], target[uuid], why))
        else:
            pending.append(uuid)
    moves: list[Move] = []
    stopped_over: set[str] = set()
    wave = 0
    while pending:
        busy: collections.Counter[str] = collections.Counter()
        started = []
        for uuid in pending:
            source, dest = where[uuid], target[uuid]
            if _slot(fleet, busy, source) and _slot(fleet, busy, dest) and occupancy.can_take(uuid, dest):
                started.append((uuid, dest))
                occupancy.hold(uuid, dest)
                busy[source] += 1
                busy[dest] += 1
        if not started:
            stop = _stop_over(fleet, occupancy, where, target, pending, stopped_over)
            if stop is None:
                uuid = pending.pop(0)
                why = occupancy.why_not(uuid, target[uuid]) or "the moves it depends on were left out"
                notes.append(_left_out(fleet, uuid, where[uuid], target[uuid], why))
                continue
            uuid, dest = stop
            stopped_over.add(uuid)
            occupancy.hold(uuid, dest)
            started.append(stop)
            notes.append(f"{fleet.instances[uuid].name} stops over on {dest} on its way from {where[uuid]} to "
                         f"{target[uuid]}: the moves it is part of only fit one after the other")
        wave += 1
        for uuid, dest in started:
            source = where[uuid]
            occupancy.release(uuid, source)
            where[uuid] = dest
            instance = fleet.instances[uuid]
            moves.append(Move(instance_uuid=uuid, instance_name=instance.name, source=source, dest=dest, wave=wave,
                              memory_mb=instance.memory_mb, stop_over=dest != target[uuid]))
        done = {uuid for uuid, dest in started if dest == target[uuid]}
        pending = [uuid for uuid in pending if uuid not in done]
    return tuple(moves), tuple(notes)


def _never(fleet: Fleet, uuid: str, dest: str) -> str | None:
    """Why instance `uuid` can never go to `dest`, whatever the order."""
    instance = fleet.instances[uuid]
    if not instance.movable:
        return f"{instance.name} may not move"
    if dest not in fleet.hosts:
        return f"there is no host {dest}"
    if not cap.may_receive(fleet.hosts[dest], instance):
        return f"{dest} may not take {instance.name}"
    if fleet.hosts[instance.host].max_migrations < 1 or fleet.hosts[dest].max_migrations < 1:
        return f"{instance.host} or {dest} allows no migration"
    return None


def _left_out(fleet: Fleet, uuid: str, source: str, dest: str, why: str) -> str:
    return f"left out: {fleet.instances[uuid].name} from {source} to {dest} ({why}); it stays on {source}"


def _slot(fleet: Fleet, busy: Mapping[str, int], host: str) -> bool:
    return busy.get(host, 0) < fleet.hosts[host].max_migrations


def _stop_over(fleet: Fleet, occupancy: cap.Occupancy, where: Mapping[str, str], target: Mapping[str, str],
               pending: Sequence[str], stopped_over: set[str]) -> tuple[str, str] | None:
    """A pending instance and a third host with room for it such that moving
    it there lets another pending move start; None when there is none. An
    instance stops over at most once, so breaking deadlocks ends."""
    into: dict[str, list[str]] = collections.defaultdict(list)
    for uuid in pending:
        into[target[uuid]].append(uuid)
    for uuid in pending:
        source = where[uuid]
        if uuid in stopped_over or not into.get(source):
            continue
        freed = occupancy.copy()
        freed.release(uuid, source)
        if not any(freed.can_take(other, source) for other in into[source] if other != uuid):
            continue
        hosts = [h for h in sorted(fleet.hosts) if h not in (source, target[uuid]) and occupancy.can_take(uuid, h)]
        if hosts:
            # The emptiest host, so the stop-over leaves the most room for others.
            return uuid, max(hosts, key=lambda h: occupancy.free(h)[1])
    return None


def waves_in_sequence(fleet: Fleet, steps: Sequence[tuple[str, str, str]], *, headroom: float = 0.0,
                      use_measured: bool = True) -> tuple[Move, ...]:
    """The moves (uuid, source, dest) in the order given, cut into waves: a
    move joins the current wave when it can run beside the moves already in
    it, else it starts the next. Each step must be possible once the steps
    before it have ended (as a hill climb's are), so the order is kept and
    every wave ends in a state the sequence passes through."""
    where = cap.current_hosts(fleet)
    occupancy = cap.Occupancy.of(fleet, where, headroom, use_measured)
    moves: list[Move] = []
    wave: list[tuple[str, str, str]] = []
    busy: collections.Counter[str] = collections.Counter()

    def close() -> None:
        for uuid, source, dest in wave:
            occupancy.release(uuid, source)
            where[uuid] = dest
        wave.clear()
        busy.clear()

    number = 1
    for uuid, source, dest in steps:
        joins = (all(uuid != other for other, _, _ in wave) and _slot(fleet, busy, source)
                 and _slot(fleet, busy, dest) and occupancy.can_take(uuid, dest))
        if not joins and wave:
            close()
            number += 1
        occupancy.hold(uuid, dest)
        busy[source] += 1
        busy[dest] += 1
        wave.append((uuid, source, dest))
        instance = fleet.instances[uuid]
        moves.append(Move(instance_uuid=uuid, instance_name=instance.name, source=source, dest=dest, wave=number,
                          memory_mb=instance.memory_mb))
    return tuple(moves)


def final_hosts(fleet: Fleet, moves: Iterable[Move]) -> dict[str, str]:
    """Where each instance (by uuid) is once `moves` have run."""
    where = cap.current_hosts(fleet)
    for move in sorted(moves, key=lambda m: m.wave):
        where[move.instance_uuid] = move.dest
    return where


def check_plan(fleet: Fleet, plan: Plan, headroom: float = 0.0, use_measured: bool = True) -> list[str]:
    """Replays `plan` wave by wave and returns what breaks the rules in the
    module docstring, one sentence each (empty when the plan is valid). A
    host that was over capacity before the plan is a violation only if the
    plan moves something onto it."""
    violations: list[str] = []
    where = cap.current_hosts(fleet)
    occupancy = cap.Occupancy.of(fleet, where, headroom, use_measured)
    waves: dict[int, list[Move]] = collections.defaultdict(list)
    for move in plan.moves:
        waves[move.wave].append(move)
    for number in sorted(waves):
        busy: collections.Counter[str] = collections.Counter()
        started: list[Move] = []
        for move in waves[number]:
            problem = _move_problem(fleet, where, move, started)
            if problem:
                violations.append(f"wave {number}: {problem}")
                continue
            why = occupancy.why_not(move.instance_uuid, move.dest)
            if why:
                violations.append(f"wave {number}: {why}")
            occupancy.hold(move.instance_uuid, move.dest)
            busy[move.source] += 1
            busy[move.dest] += 1
            started.append(move)
        for host, count in sorted(busy.items()):
            if count > fleet.hosts[host].max_migrations:
                violations.append(f"wave {number}: {count} migrations on {host}, which allows "
                                  f"{fleet.hosts[host].max_migrations}")
        for move in started:
            occupancy.release(move.instance_uuid, move.source)
            where[move.instance_uuid] = move.dest
    return violations


def _move_problem(fleet: Fleet, where: Mapping[str, str], move: Move, started: Sequence[Move]) -> str | None:
    """What makes `move` impossible in itself, before capacity is counted."""
    instance = fleet.instances.get(move.instance_uuid)
    if instance is None:
        return f"there is no instance {move.instance_uuid}"
    if move.dest not in fleet.hosts:
        return f"there is no host {move.dest}"
    if any(m.instance_uuid == move.instance_uuid for m in started):
        return f"{instance.name} moves twice in one wave"
    if where[move.instance_uuid] != move.source:
        return f"{instance.name} is on {where[move.instance_uuid]}, not {move.source}"
    if move.dest == move.source:
        return f"{instance.name} moves from {move.source} to itself"
    if not instance.movable:
        return f"{instance.name} may not move"
    return None
