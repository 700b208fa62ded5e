"""`livemig rebalance` and `livemig consolidate`: a fleet planner's plan
shown (per-host load before and after, the moves by wave, the figures it is
judged by), confirmed as `host drain` confirms, then run as an operation
with the drain's live progress. What runs is the plan that was shown: the
confirmed document is handed back to the library, not planned again."""
from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, Callable

import click

from livemig.cli.common import Duration, State, emit, format_option, handle_errors, out, outcome_reported_here
from livemig.planning.model import REBALANCE_MAX_MOVES, REBALANCE_MIN_GAIN, REBALANCE_THRESHOLD

if TYPE_CHECKING:
    from livemig.operations.views import OperationView

METRICS = ("cpu", "memory", "both")
BAR_WIDTH = 20

PLAN_HOST_COLUMNS = [("HOST", "name"), ("INSTANCES", "instances"), ("CPU_BEFORE", "cpu_before"),
                     ("CPU_AFTER", "cpu_after"), ("MEMORY_BEFORE", "memory_before"),
                     ("MEMORY_AFTER", "memory_after")]
PLAN_MOVE_COLUMNS = [("WAVE", "wave"), ("INSTANCE", "instance"), ("FROM", "source"), ("TO", "dest"),
                     ("MEMORY_MB", "memory_mb"), ("NOTE", "note")]


class Fraction(click.ParamType):
    """A fraction, written as 0.2 or as a percentage, 20%."""

    name = "fraction"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        percent = text.endswith("%")
        try:
            number = float(text[:-1] if percent else text)
        except ValueError:
            self.fail(f"{value!r} is not a fraction (0.2) or a percentage (20%)", param, ctx)
        if number != number:  # nan
            self.fail(f"{value!r} is not a number", param, ctx)
        return number / 100 if percent else number


def fleet_run_options(fn: Callable) -> Callable:
    """What every fleet-wide operation takes, as `host drain` does."""
    options = [
        click.option("--window", "window_s", type=Duration(), default="1h", show_default=True,
                     help="Measured load over this long before now (90s, 30m, 1h, 2d); instances with no "
                          "sample in it count by allocation."),
        click.option("--policy", default=None, metavar="NAME",
                     help="The migration policy of every move (default: each instance's, by the policy rules)."),
        click.option("--parallel", type=int, default=None,
                     help="At most N moves in flight at once (default: as many as the wave and the hosts' "
                          "limits allow)."),
        click.option("--dry-run", is_flag=True, help="Show the plan; change nothing."),
        click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation."),
        click.option("--no-wait", is_flag=True, help="With ZooKeeper: return once the operation is posted."),
        format_option,
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), fn)


@click.command()
@click.option("--metric", type=click.Choice(METRICS), default="cpu", show_default=True,
              help="The load to even out: CPU, memory, or both (the mean of their imbalances).")
@click.option("--threshold", type=float, default=REBALANCE_THRESHOLD, show_default=True,
              help="Stop once the imbalance (the standard deviation of per-host load, 0 to 1) is below this.")
@click.option("--min-gain", type=float, default=REBALANCE_MIN_GAIN, show_default=True,
              help="Each move must lower the imbalance by at least this.")
@click.option("--max-moves", type=int, default=REBALANCE_MAX_MOVES, show_default=True,
              help="At most this many instances move.")
@fleet_run_options
@click.pass_obj
@handle_errors
def rebalance(state: State, metric: str, threshold: float, min_gain: float, max_moves: int, window_s: float,
              policy: str | None, parallel: int | None, dry_run: bool, yes: bool, no_wait: bool,
              output_format: str) -> None:
    """Spread the load: move instances off the busiest hosts until the
    imbalance (the standard deviation of per-host normalised load) is below
    --threshold, with as few moves as possible."""
    from livemig.operations import api as operations

    def call(**kwargs: Any) -> OperationView:
        return operations.rebalance_fleet(state.context(), metric=metric, threshold=threshold, min_gain=min_gain,
                                          max_moves=max_moves, window_s=window_s, parallel=parallel,
                                          policy=policy, settings=state.settings, **kwargs)

    _plan_confirm_run(call, dry_run, yes, no_wait, output_format, print_rebalance_plan, _rebalance_question,
                      _rebalance_needless)


@click.command()
@click.option("--headroom", type=Fraction(), default="20%", show_default=True,
              help="Keep this much of each host's physical CPU and memory free of measured peak load "
                   "(0.2 or 20%; with --by measured).")
@click.option("--by", type=click.Choice(["measured", "allocated"]), default="measured", show_default=True,
              help="Pack by allocations and measured peak load, or by allocations only.")
@click.option("--max-moves", type=int, default=None, help="At most this many moves (default: no limit).")
@fleet_run_options
@click.pass_obj
@handle_errors
def consolidate(state: State, headroom: float, by: str, max_moves: int | None, window_s: float,
                policy: str | None, parallel: int | None, dry_run: bool, yes: bool, no_wait: bool,
                output_format: str) -> None:
    """Pack instances onto as few hosts as possible, then put the hosts
    emptied in standby (no placements until `livemig host wake`), ready to
    be powered off."""
    from livemig.operations import api as operations

    def call(**kwargs: Any) -> OperationView:
        return operations.consolidate_fleet(state.context(), headroom=headroom, by=by, max_moves=max_moves,
                                            window_s=window_s, parallel=parallel, policy=policy,
                                            settings=state.settings, **kwargs)

    _plan_confirm_run(call, dry_run, yes, no_wait, output_format, print_consolidation_plan,
                      _consolidation_question, _consolidation_needless)


def _plan_confirm_run(call: Callable[..., OperationView], dry_run: bool, yes: bool, no_wait: bool,
                      output_format: str, show: Callable[[OperationView], None],
                      question: Callable[[OperationView], str],
                      needless: Callable[[OperationView], str | None]) -> None:
    """Plan; show (and with --dry-run stop); say so and stop when there is
    nothing to do; confirm on a terminal (refuse without one, unless
    --yes); then run the plan shown."""
    from livemig.cli.operation import OperationProgress, finish, print_operation
    from livemig.errors import InvalidInput

    plan = call(dry_run=True, wait=not no_wait)
    if dry_run:
        if output_format == "json":
            print_operation(plan, "json")
        else:
            show(plan)
            out.print("dry run: nothing changed", markup=False)
        return
    why_not = needless(plan)
    if why_not is not None:
        if output_format == "json":
            print_operation(plan, "json")
        else:
            show(plan)
            out.print(f"no moves needed: {why_not}; nothing changed", markup=False)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidInput(f"{question(plan)}: pass --yes to confirm (not a terminal, cannot ask)")
        show(plan)
        if not click.confirm(f"{question(plan)}?", default=False):
            out.print("nothing changed", markup=False)
            return
    elif output_format == "table":
        show(plan)
    # Each move's outcome is shown by the progress (not also as a log line).
    with outcome_reported_here(), OperationProgress(enabled=output_format == "table") as progress:
        view = call(plan=plan.plan, wait=not no_wait, progress=progress)
    if no_wait:
        print_operation(view, output_format, events=False)
        return
    finish(view, output_format)


# -- rebalance ---------------------------------------------------------------------------------------

def _rebalance_question(plan: OperationView) -> str:
    return f"rebalancing moves {len(plan.moves)} instance(s)"


def _rebalance_needless(plan: OperationView) -> str | None:
    if plan.moves:
        return None
    figures, arguments = plan.plan.get("figures", {}), plan.arguments
    before = figures.get("imbalance_before", 0.0)
    if before < arguments["threshold"]:
        return f"the imbalance {before:.4f} is below the threshold {arguments['threshold']:g}"
    return (f"no move lowers the imbalance ({before:.4f}) by at least --min-gain {arguments['min_gain']:g}"
            + (" (--max-moves 0)" if arguments.get("max_moves") == 0 else ""))


def print_rebalance_plan(plan: OperationView) -> None:
    """The measure before and after, each host's load before and after (a
    bar chart too on a terminal), and the moves by wave."""
    document, arguments = plan.plan, plan.arguments
    figures = document.get("figures", {})
    metric = arguments["metric"]
    click.echo(f"rebalance plan: metric {metric}, over {_duration(arguments['window_s'])}, "
               f"{_load_source(document)}")
    click.echo(f"imbalance ({document.get('measure', 'standard deviation of per-host load')}): "
               f"{figures.get('imbalance_before', 0.0):.4f} before, {figures.get('imbalance_after', 0.0):.4f} after "
               f"(threshold {arguments['threshold']:g})")
    _print_hosts(document)
    if sys.stdout.isatty():
        for line in load_bars(document.get("hosts", []), metric):
            click.echo(line)
    _print_moves(document)


# -- consolidate -------------------------------------------------------------------------------------

def _consolidation_question(plan: OperationView) -> str:
    standby = plan.plan.get("emptied", [])
    return (f"consolidating moves {len(plan.moves)} instance(s)"
            + (f" and puts {', '.join(standby)} in standby" if standby else ""))


def _consolidation_needless(plan: OperationView) -> str | None:
    if plan.moves or plan.plan.get("emptied"):
        return None
    figures = plan.plan.get("figures", {})
    used, lower = int(figures.get("hosts_before", 0)), int(figures.get("lower_bound", 0))
    if used <= lower:
        return f"{used} host(s) in use, the lower bound is {lower}"
    return f"{used} host(s) in use (lower bound {lower}), and no packing found frees one"


def print_consolidation_plan(plan: OperationView) -> None:
    """Hosts used before and after against the lower bound, the solver and
    whether it proved the plan optimal, the moves and memory to copy, the
    hosts put in standby, and the power saved."""
    document, arguments = plan.plan, plan.arguments
    figures = document.get("figures", {})
    by = arguments.get("by", "measured")
    kept = (f", {arguments['headroom'] * 100:g}% of each host kept free" if by == "measured" else "")
    click.echo(f"consolidation plan: by {'allocation and measured peak load' if by == 'measured' else 'allocation'}"
               f" over {_duration(arguments['window_s'])}{kept}" + (f"; {_load_source(document)}"
                                                                     if by == "measured" else ""))
    used_after, lower = int(figures.get("hosts_after", 0)), int(figures.get("lower_bound", 0))
    gap = ("the plan reaches it" if used_after <= lower else f"{used_after - lower} above it")
    click.echo(f"hosts used: {int(figures.get('hosts_before', 0))} before, {used_after} after; lower bound "
               f"{lower} ({gap})")
    click.echo(f"solver: {document.get('method')}, {_optimality(document, used_after, lower)}")
    click.echo(f"moves: {len(document.get('moves', []))}, {figures.get('memory_to_copy_mb', 0.0):.0f} MiB of "
               f"memory to copy")
    emptied = document.get("emptied", [])
    click.echo(f"to standby: {', '.join(emptied) if emptied else 'none'}")
    model = document.get("power_model", {})
    before, after = figures.get("watts_before", 0.0), figures.get("watts_after", 0.0)
    model_text = (f"linear model, {model['idle_watts']:g} W idle to {model['peak_watts']:g} W at full CPU per "
                  f"powered host" if model else "linear model")
    click.echo(f"power ({model_text}): {before:.0f} W before, {after:.0f} W after; saves {before - after:.0f} W, "
               f"{figures.get('kwh_per_day_saved', 0.0):.1f} kWh/day")
    _print_hosts(document)
    _print_moves(document)


def _optimality(document: dict, used_after: int, lower: int) -> str:
    if not document.get("optimal"):
        return "not proven optimal"
    if document.get("method") == "cp-sat" and used_after > lower:
        return "proven optimal (no plan uses fewer hosts)"
    return "optimal (it uses as few hosts as the lower bound)"


# -- shared ------------------------------------------------------------------------------------------

class _Row:
    def __init__(self, data: dict):
        self._data = data

    def to_dict(self) -> dict:
        return self._data


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def _print_hosts(document: dict) -> None:
    rows = [_Row({"name": h["name"], "instances": f"{h['instances_before']} -> {h['instances_after']}",
                  **{key: _percent(h[key]) for key in ("cpu_before", "cpu_after", "memory_before", "memory_after")}})
            for h in document.get("hosts", [])]
    emit("table", rows, PLAN_HOST_COLUMNS)


def _print_moves(document: dict) -> None:
    moves = document.get("moves", [])
    if not moves:
        click.echo("moves: none")
    else:
        waves = len({m["wave"] for m in moves})
        click.echo(f"moves: {len(moves)} in {waves} wave(s) (a wave starts when the one before it has ended)")
        emit("table", [_Row(dict(m, note="stop-over" if m.get("stop_over") else "")) for m in moves],
             PLAN_MOVE_COLUMNS)
    for note in document.get("notes", []):
        click.echo(f"note: {note}")


def load_bars(hosts: list[dict], metric: str, width: int = BAR_WIDTH) -> list[str]:
    """Per host, its load in `metric` before and after as two bars of
    `width` cells (a full bar is a full host; `!` marks a host over 100%)."""
    def value(host: dict, when: str) -> float:
        if metric == "both":
            return (host[f"cpu_{when}"] + host[f"memory_{when}"]) / 2
        return host[f"{metric}_{when}"]

    def bar(load: float) -> str:
        cells = max(0.0, min(load, 1.0)) * width
        full = int(cells)
        text = "█" * full + ("▌" if cells - full >= 0.5 and full < width else "")
        return f"{text:<{width}}" + ("!" if load > 1.0 else " ")

    label = f"{metric} load"
    column = max([len(label), *(len(h["name"]) for h in hosts)])
    lines = [f"{label:<{column}}  {'before':<{width + 6}}  after"]
    for host in hosts:
        before, after = value(host, "before"), value(host, "after")
        lines.append(f"{host['name']:<{column}}  {bar(before)}{_percent(before):>5}  {bar(after)}{_percent(after):>5}")
    return lines


def _load_source(document: dict) -> str:
    if document.get("measured"):
        return "measured load (instances with no sample in the window by allocation)"
    return "by allocation (no load sample in the window)"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
