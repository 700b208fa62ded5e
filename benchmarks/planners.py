"""livemig's fleet planners against Watcher-like baselines (issue 15).

    python -m benchmarks.planners [--fleets 200] [--time-limit 10] [--threshold 0.05]
        [--scale-hosts 1000 --scale-instances 10000] [--crossover-hosts 10,20,35,50,70,100]
        [--skip-scale] [--skip-crossover] [--workers 2] [--result planners]
    python -m benchmarks.planners --tables-from benchmarks/results/planners.partial.json

On the seeded fleets of benchmarks/planner_fleets.py (fleet 0 to FLEETS-1;
`--fleets 20` for a quick run):
- consolidation: `plan_consolidation` (measured peaks, no headroom) against
  `watcher_consolidation`: hosts used after against the lower bound (plans
  that reach it, mean excess), moves, memory to copy, planning time, and
  whether each plan can run: livemig's plan as it is, Watcher's as its
  weight planner runs it (two migrations at a time, in its order) and one
  at a time, replayed by `check_plan` (a migration holds room on both hosts
  until it ends; per-host migration limits);
- rebalance: `plan_rebalance` (measured CPU, THRESHOLD, its defaults
  otherwise: at most 50 moves, each gaining at least 0.0001) against `watcher_stabilization` with the same metric
  and threshold: imbalance before and after, moves, memory, time, and the
  same replay;
- planning time for SCALE_HOSTS hosts and SCALE_INSTANCES instances, both
  planners;
- where CP-SAT pays: mixed fleets of CROSSOVER_HOSTS hosts (about 8 to 25
  instances per host), `method="cp-sat"` against `"first-fit-decreasing"`:
  hosts after, moves, memory, time, against the instance-host pair count
  (CP_SAT_MAX_PAIRS in livemig/planning/consolidate.py is set from it).
Times are CPU seconds of this process (`time.process_time`, CP-SAT's
threads included), not wall time, which on a shared machine mostly measures
the other work; CP-SAT's own limit is still in wall seconds. Raw figures go
to benchmarks/results/planners.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.common import RESULTS, console, table, write_result
from benchmarks.planner_fleets import GeneratedFleet, fleet_number, sized_fleet
from benchmarks.watcher_baselines import (
    BaselineResult, applier_plan, sequential_plan, watcher_consolidation, watcher_stabilization)
from livemig.planning import bounds
from livemig.planning import capacity as cap
from livemig.planning.consolidate import plan_consolidation
from livemig.planning.model import Fleet, Plan
from livemig.planning.ordering import check_plan, final_hosts
from livemig.planning.rebalance import plan_rebalance


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """The call's result and the CPU seconds this process spent on it: on a
    machine shared with other work, wall time mostly measures the others."""
    start = time.process_time()
    result = call()
    return result, time.process_time() - start


def _moved_memory(fleet: Fleet, start: dict[str, str], end: dict[str, str]) -> tuple[int, float]:
    moved = [u for u in end if end[u] != start[u]]
    return len(moved), float(sum(fleet.instances[u].memory_mb for u in moved))


def consolidation_case(generated: GeneratedFleet, time_limit_s: float = 10.0) -> dict[str, Any]:
    """Both consolidation planners on one fleet: their figures, one dict."""
    fleet = generated.fleet
    start = cap.current_hosts(fleet)
    lower = bounds.lower_bound(fleet)
    plan, livemig_s = timed(lambda: plan_consolidation(fleet, time_limit_s=time_limit_s))
    end = final_hosts(fleet, plan.moves)
    watcher, watcher_s = timed(lambda: watcher_consolidation(fleet))
    return {
        "fleet": generated.number, "kind": generated.kind, "hosts": len(fleet.hosts),
        "instances": len(fleet.instances), "hosts_before": len(set(start.values())), "lower_bound": lower,
        "known_optimum": generated.known_optimum,
        "livemig": {
            "method": plan.method, "optimal": plan.optimal, "hosts_after": len(set(end.values())),
            "moves": len(plan.moves), "memory_to_copy_mb": float(sum(m.memory_mb for m in plan.moves)),
            "stop_overs": sum(1 for m in plan.moves if m.stop_over), "violations": len(check_plan(fleet, plan)),
            "crowded_after": len(cap.crowded_hosts(fleet, end)), "seconds": livemig_s,
        },
        "watcher": _baseline_figures(fleet, start, watcher, watcher_s),
    }


def _baseline_figures(fleet: Fleet, start: dict[str, str], result: BaselineResult, seconds: float) -> dict[str, Any]:
    moved, memory = _moved_memory(fleet, start, dict(result.where))
    applier = check_plan(fleet, applier_plan(fleet, result))
    sequential = check_plan(fleet, sequential_plan(fleet, result))
    return {
        "hosts_after": len(set(result.where.values())), "moves": len(result.steps),
        "memory_to_copy_mb": float(sum(fleet.instances[u].memory_mb for u, _, _ in result.steps)),
        "instances_moved": moved, "violations_applier": len(applier), "violations_sequential": len(sequential),
        "first_violation": (applier or sequential or [None])[0],
        "crowded_after": len(cap.crowded_hosts(fleet, dict(result.where))), "seconds": seconds,
    }


def rebalance_case(generated: GeneratedFleet, threshold: float = 0.05, metric: str = "cpu") -> dict[str, Any]:
    """Both rebalance planners on one fleet."""
    fleet = generated.fleet
    start = cap.current_hosts(fleet)
    plan, livemig_s = timed(lambda: plan_rebalance(fleet, metric=metric, threshold=threshold))
    end = final_hosts(fleet, plan.moves)
    watcher, watcher_s = timed(lambda: watcher_stabilization(fleet, metric=metric, threshold=threshold))
    return {
        "fleet": generated.number, "kind": generated.kind, "hosts": len(fleet.hosts),
        "instances": len(fleet.instances), "imbalance_before": bounds.imbalance(fleet, start, metric),
        "threshold": threshold,
        "livemig": {
            "imbalance_after": bounds.imbalance(fleet, end, metric), "moves": len(plan.moves),
            "memory_to_copy_mb": float(sum(m.memory_mb for m in plan.moves)),
            "violations": len(check_plan(fleet, plan)), "crowded_after": len(cap.crowded_hosts(fleet, end)),
            "seconds": livemig_s,
        },
        "watcher": {"imbalance_after": bounds.imbalance(fleet, dict(watcher.where), metric),
                    **_baseline_figures(fleet, start, watcher, watcher_s)},
    }


def fleet_cases(k: int, time_limit_s: float, threshold: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fleet number `k`, consolidated and rebalanced (a worker's job)."""
    generated = fleet_number(k)
    return consolidation_case(generated, time_limit_s), rebalance_case(generated, threshold)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def consolidation_rows(cases: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    groups = [("all", cases), ("mixed", [c for c in cases if c["kind"] == "mixed"]),
              ("hard", [c for c in cases if c["kind"] != "mixed"])]
    for label, chosen in groups:
        if not chosen:
            continue
        for who, other in (("livemig", "watcher"), ("watcher", "livemig")):
            figures = [c[who] for c in chosen]
            excess = [f["hosts_after"] - c["lower_bound"] for f, c in zip(figures, chosen)]
            fewer = sum(1 for c in chosen if c[who]["hosts_after"] < c[other]["hosts_after"])
            rows.append([label, who, len(chosen), sum(1 for e in excess if e == 0), fewer, f"{_mean(excess):.2f}",
                         f"{_mean([e / c['lower_bound'] for e, c in zip(excess, chosen)]) * 100:.1f}%",
                         f"{_mean([c['hosts_before'] - f['hosts_after'] for f, c in zip(figures, chosen)]):.1f}",
                         f"{_mean([f['moves'] for f in figures]):.0f}",
                         f"{_mean([f['memory_to_copy_mb'] for f in figures]) / 1024:.0f}",
                         _not_executable(figures), _cpu(figures)])
    return rows


def _not_executable(figures: Sequence[dict[str, Any]]) -> str:
    """How many plans break a rule when replayed: livemig's as planned;
    Watcher's as its applier runs them, and one move at a time."""
    if "violations" in figures[0]:
        return str(sum(1 for f in figures if f["violations"]))
    return (f"{sum(1 for f in figures if f['violations_applier'])} / "
            f"{sum(1 for f in figures if f['violations_sequential'])}")


def _cpu(figures: Sequence[dict[str, Any]]) -> str:
    seconds = [f["seconds"] for f in figures]
    return f"{_median(seconds):.2f} / {max(seconds):.2f}"


def rebalance_rows(cases: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One row per planner over the mixed fleets (the hard ones are balanced
    already: one host size, every instance alike)."""
    active = [c for c in cases if c["kind"] == "mixed"]
    if not active:
        return []
    rows = []
    for who, other in (("livemig", "watcher"), ("watcher", "livemig")):
        figures = [c[who] for c in active]
        lower = sum(1 for c in active if c[who]["imbalance_after"] < c[other]["imbalance_after"] - 1e-9)
        rows.append([who, len(active), f"{_mean([c['imbalance_before'] for c in active]):.3f}",
                     f"{_mean([f['imbalance_after'] for f in figures]):.3f}",
                     sum(1 for c in active if c[who]["imbalance_after"] < c["threshold"]), lower,
                     f"{_mean([f['moves'] for f in figures]):.0f}",
                     f"{_mean([f['memory_to_copy_mb'] for f in figures]) / 1024:.0f}",
                     _not_executable(figures), _cpu(figures)])
    return rows


def scale_case(hosts: int, instances: int, time_limit_s: float, threshold: float) -> dict[str, Any]:
    generated = sized_fleet(hosts, instances)
    fleet = generated.fleet
    consolidated, consolidate_s = timed(lambda: plan_consolidation(fleet, time_limit_s=time_limit_s))
    rebalanced, rebalance_s = timed(lambda: plan_rebalance(fleet, threshold=threshold, max_moves=500))
    rebalanced_50, rebalance_50_s = timed(lambda: plan_rebalance(fleet, threshold=threshold))
    watcher_c, watcher_c_s = timed(lambda: watcher_consolidation(fleet))
    watcher_r, watcher_r_s = timed(lambda: watcher_stabilization(fleet, threshold=threshold))
    return {
        "hosts": len(fleet.hosts), "instances": len(fleet.instances),
        "rows": [
            ["consolidate", "livemig", consolidate_s, consolidated.method, len(consolidated.moves)],
            ["consolidate", "watcher", watcher_c_s, "watcher", len(watcher_c.steps)],
            ["rebalance", "livemig (max 500 moves)", rebalance_s, rebalanced.method, len(rebalanced.moves)],
            ["rebalance", "livemig (max 50 moves)", rebalance_50_s, rebalanced_50.method, len(rebalanced_50.moves)],
            ["rebalance", "watcher", watcher_r_s, "watcher", len(watcher_r.steps)],
        ],
    }


def crossover_case(hosts: int, seed: int, time_limit_s: float) -> dict[str, Any]:
    """CP-SAT and the heuristic on one mixed fleet of `hosts` hosts."""
    import random

    from benchmarks.planner_fleets import generate

    generated = generate(random.Random(f"livemig-planners-crossover-{hosts}-{seed}"), -1, "mixed", hosts)
    fleet = generated.fleet
    row: dict[str, Any] = {"hosts": len(fleet.hosts), "instances": len(fleet.instances),
                           "pairs": len(fleet.hosts) * len(fleet.instances), "lower_bound": bounds.lower_bound(fleet)}
    for method in ("cp-sat", "first-fit-decreasing"):
        plan, seconds = timed(lambda: plan_consolidation(fleet, method=method, time_limit_s=time_limit_s))
        end = final_hosts(fleet, plan.moves)
        row[method] = {"hosts_after": len(set(end.values())), "moves": len(plan.moves),
                       "memory_to_copy_mb": float(sum(m.memory_mb for m in plan.moves)), "method": plan.method,
                       "optimal": plan.optimal, "seconds": seconds}
    return row


def _fleet_tables(args: argparse.Namespace, consolidations: Sequence[dict[str, Any]],
                  rebalances: Sequence[dict[str, Any]]) -> None:
    table(f"Consolidation on {len(consolidations)} fleets",
          ["fleets", "planner", "n", "at the bound", "fewer hosts than the other", "mean excess (hosts)",
           "mean excess", "hosts freed (mean)", "moves (mean)", "memory to copy (GiB, mean)",
           "not executable (applier / one at a time)",
           "CPU s (median / max)"], consolidation_rows(consolidations))
    table(f"Rebalance (measured CPU, threshold {args.threshold}) on the mixed fleets",
          ["planner", "n", "imbalance before (mean)", "after (mean)", "below the threshold",
           "lower than the other",
           "moves (mean)", "memory to copy (GiB, mean)", "not executable (applier / one at a time)",
           "CPU s (median / max)"], rebalance_rows(rebalances))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.planners", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleets", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=10.0, help="CP-SAT's limit per plan (s)")
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--scale-hosts", type=int, default=1000)
    parser.add_argument("--scale-instances", type=int, default=10_000)
    parser.add_argument("--crossover-hosts", default="10,20,35,50,70,100")
    parser.add_argument("--crossover-seeds", type=int, default=2)
    parser.add_argument("--result", default="planners", help="benchmarks/results/RESULT.json")
    parser.add_argument("--workers", type=int, default=2, help="processes planning fleets at once")
    parser.add_argument("--tables-from", metavar="JSON", help="print the fleet tables of a saved run and stop")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-crossover", action="store_true")
    args = parser.parse_args(argv)
    if args.tables_from:
        saved = json.loads(Path(args.tables_from).read_text())
        args.threshold = saved["threshold"]
        _fleet_tables(args, saved["consolidation"], saved["rebalance"])
        return 0
    load_before = os.getloadavg()
    data: dict[str, Any] = {"fleets": args.fleets, "time_limit_s": args.time_limit, "threshold": args.threshold}

    consolidations: list[dict[str, Any]] = []
    rebalances: list[dict[str, Any]] = []
    # Fleets are independent: WORKERS processes plan them (each fleet's times
    # are its own process's CPU seconds), printed in fleet order.
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = pool.map(fleet_cases, range(args.fleets), itertools.repeat(args.time_limit),
                           itertools.repeat(args.threshold))
        for c, r in results:
            consolidations.append(c)
            rebalances.append(r)
            # Saved as it goes: a run cut short still has its figures.
            partial = RESULTS / f"{args.result}.partial.json"
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({**data, "consolidation": consolidations, "rebalance": rebalances}))
            console.print(f"fleet {c['fleet']} ({c['kind']}, {c['hosts']} hosts, {c['instances']} instances): "
                          f"bound {c['lower_bound']}, livemig {c['livemig']['hosts_after']} "
                          f"({c['livemig']['method']}), watcher {c['watcher']['hosts_after']}; imbalance "
                          f"{r['imbalance_before']:.3f} -> livemig {r['livemig']['imbalance_after']:.3f}, "
                          f"watcher {r['watcher']['imbalance_after']:.3f}")
    data["consolidation"] = consolidations
    data["rebalance"] = rebalances
    if consolidations:
        _fleet_tables(args, consolidations, rebalances)

    if not args.skip_scale:
        scale = scale_case(args.scale_hosts, args.scale_instances, args.time_limit, args.threshold)
        data["scale"] = scale
        table(f"Planning time, {scale['hosts']} hosts and {scale['instances']} instances",
              ["plan", "planner", "CPU seconds", "method", "moves"], scale["rows"])

    if not args.skip_crossover:
        rows, crossover = [], []
        for hosts in (int(h) for h in args.crossover_hosts.split(",")):
            for seed in range(args.crossover_seeds):
                case = crossover_case(hosts, seed, args.time_limit)
                crossover.append(case)
                cp, ffd = case["cp-sat"], case["first-fit-decreasing"]
                rows.append([case["pairs"], case["hosts"], case["instances"], case["lower_bound"],
                             f"{cp['hosts_after']} ({cp['method']}{', optimal' if cp['optimal'] else ''})",
                             ffd["hosts_after"], f"{cp['moves']} / {ffd['moves']}",
                             f"{cp['memory_to_copy_mb'] / 1024:.0f} / {ffd['memory_to_copy_mb'] / 1024:.0f}",
                             f"{cp['seconds']:.2f} / {ffd['seconds']:.2f}"])
        data["crossover"] = crossover
        table("Where CP-SAT pays (time limit {:.0f} s)".format(args.time_limit),
              ["pairs", "hosts", "instances", "bound", "hosts after, CP-SAT", "hosts after, heuristic",
               "moves (CP-SAT / heuristic)", "memory GiB", "CPU seconds"], rows)

    data["load_average_before"] = load_before
    data["load_average_after"] = os.getloadavg()
    console.print(f"load average before {load_before[0]:.2f}, after {data['load_average_after'][0]:.2f} "
                  f"(1 minute; {os.cpu_count()} CPUs)")
    write_result(args.result, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
