"""A rebalance's or consolidation's plan, made from the inventory and the
load samples by the pure planners (livemig.planning), checked, and written
down as the JSON document the operation records and runs: its moves wave by
wave, its figures, and each host's load before and after (what the command
line shows before anything changes)."""
from __future__ import annotations

from typing import Any, Mapping

from sqlalchemy.orm import Session

from livemig.config import Settings
from livemig.errors import LivemigError
from livemig.operations.states import OperationKind
from livemig.planning.model import REBALANCE_MAX_MOVES, Fleet, Plan


class PlanRejected(LivemigError):
    """The planner's plan breaks its own rules (a planner bug): nothing runs."""


def make_plan(session: Session, kind: OperationKind, arguments: Mapping[str, Any], settings: Settings) -> dict:
    """The plan document for `kind` with the operation's `arguments`
    (window_s, and the planner's own: metric, threshold, min_gain, max_moves
    or headroom, by, max_moves)."""
    from livemig.load.fleet import ALLOCATED, MEASURED, build_fleet
    from livemig.planning.ordering import check_plan

    # A consolidation `by` allocated reads no samples and holds no measured load.
    use_measured = arguments.get("by", MEASURED) == MEASURED
    fleet = build_fleet(session, window_s=arguments["window_s"], settings=settings,
                        metric_source=MEASURED if use_measured else ALLOCATED)
    headroom = 0.0
    if kind is OperationKind.CONSOLIDATE:
        from livemig.planning.consolidate import plan_consolidation

        headroom = arguments["headroom"]
        plan = plan_consolidation(fleet, headroom=headroom, use_measured=use_measured,
                                  max_moves=arguments.get("max_moves"))
    else:
        from livemig.planning.rebalance import plan_rebalance

        max_moves = arguments.get("max_moves")
        plan = plan_rebalance(fleet, metric=arguments["metric"], threshold=arguments["threshold"],
                              min_gain=arguments["min_gain"],
                              max_moves=REBALANCE_MAX_MOVES if max_moves is None else max_moves)
    problems = check_plan(fleet, plan, headroom=headroom, use_measured=use_measured)
    if problems:
        raise PlanRejected(f"the {kind.value} plan ({plan.method}) breaks its rules, nothing was changed: "
                           + "; ".join(problems[:3]))
    document = plan_document(fleet, plan)
    if kind is OperationKind.REBALANCE:
        document["measure"] = imbalance_measure(arguments["metric"])
    else:
        # What the watts are computed with (the settings of the time).
        document["power_model"] = {"idle_watts": settings.host_idle_watts, "peak_watts": settings.host_peak_watts}
    return document


def imbalance_measure(metric: str) -> str:
    """The rebalance's measure in words (livemig.planning.bounds.imbalance)."""
    if metric == "both":
        return "mean of the standard deviations of per-host CPU and memory load"
    return f"standard deviation of per-host {'CPU' if metric == 'cpu' else 'memory'} load"


def plan_document(fleet: Fleet, plan: Plan) -> dict:
    """`plan` as JSON: its moves (by wave), figures, notes, the hosts it
    empties, and per host the CPU and memory load before and after."""
    from livemig.planning.bounds import host_loads
    from livemig.planning.ordering import final_hosts

    before = {uuid: instance.host for uuid, instance in fleet.instances.items()}
    after = final_hosts(fleet, plan.moves)
    loads = {(metric, when): host_loads(fleet, where, metric, hosts=fleet.hosts)
             for metric in ("cpu", "memory") for when, where in (("before", before), ("after", after))}
    hosts = [{"name": name, "instances_before": sum(1 for h in before.values() if h == name),
              "instances_after": sum(1 for h in after.values() if h == name),
              **{f"{metric}_{when}": round(value[name], 4) for (metric, when), value in loads.items()}}
             for name in sorted(fleet.hosts)]
    moves = [{"instance_uuid": m.instance_uuid, "instance": m.instance_name, "source": m.source, "dest": m.dest,
              "wave": m.wave, "memory_mb": m.memory_mb, "stop_over": m.stop_over}
             for m in sorted(plan.moves, key=lambda m: m.wave)]
    return {"kind": plan.kind, "method": plan.method, "optimal": plan.optimal, "emptied": list(plan.emptied),
            "figures": {k: float(v) for k, v in plan.figures.items()}, "notes": list(plan.notes), "moves": moves,
            "hosts": hosts, "measured": any(i.measured for i in fleet.instances.values())}
