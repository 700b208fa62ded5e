"""Load curves for the fake driver: what a fake domain (or a fake host's own
overhead) uses over time, so samplers and planners can be tested on fleets
that no lab could hold.

A profile is a small JSON-able dict, kept in the fake host's file beside the
domain, so every process sees the same curve and it travels with a migrated
domain:

    {"shape": "constant", "value": 1.5}
    {"shape": "sine", "mean": 2.0, "amplitude": 1.0, "period_s": 600, "phase_s": 0}
    {"shape": "step", "before": 0.2, "after": 3.0, "at": 1764763200.0}

Times are seconds on the driver's clock (the wall clock unless a test gives
another). A CPU profile is in cores, a memory profile in MiB. `integral`
gives the cumulative CPU time a counter reports, so readings taken at any two
instants differ by exactly the work done between them."""
from __future__ import annotations

import math
from typing import Any, Mapping

from livemig.errors import InvalidInput

SHAPES = ("constant", "sine", "step")
Profile = Mapping[str, Any]


def constant(value: float) -> dict[str, Any]:
    return {"shape": "constant", "value": float(value)}


def sine(mean: float, amplitude: float, period_s: float, phase_s: float = 0.0) -> dict[str, Any]:
    return {"shape": "sine", "mean": float(mean), "amplitude": float(amplitude), "period_s": float(period_s),
            "phase_s": float(phase_s)}


def step(before: float, after: float, at: float) -> dict[str, Any]:
    return {"shape": "step", "before": float(before), "after": float(after), "at": float(at)}


def _number(profile: Profile, key: str) -> float:
    value = profile.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"load profile {dict(profile)!r}: {key} must be a number")
    return float(value)


def check_profile(profile: Profile, ceiling: float) -> dict[str, Any]:
    """The profile, checked: its curve stays within [0, ceiling] (cores or MiB)."""
    shape = profile.get("shape")
    if shape not in SHAPES:
        raise InvalidInput(f"load profile shape must be one of {', '.join(SHAPES)}, not {shape!r}")
    if shape == "constant":
        low = high = _number(profile, "value")
        checked = constant(low)
    elif shape == "sine":
        mean, amplitude, period = (_number(profile, k) for k in ("mean", "amplitude", "period_s"))
        phase = _number(profile, "phase_s") if "phase_s" in profile else 0.0
        if period <= 0 or amplitude < 0:
            raise InvalidInput("a sine load profile needs period_s > 0 and amplitude >= 0")
        low, high = mean - amplitude, mean + amplitude
        checked = sine(mean, amplitude, period, phase)
    else:
        before, after, at = (_number(profile, k) for k in ("before", "after", "at"))
        low, high = min(before, after), max(before, after)
        checked = step(before, after, at)
    if low < 0 or high > ceiling:
        raise InvalidInput(f"load profile {checked!r} leaves [0, {ceiling:g}]")
    return checked


def value_at(profile: Profile, t: float) -> float:
    shape = profile["shape"]
    if shape == "constant":
        return profile["value"]
    if shape == "sine":
        return profile["mean"] + profile["amplitude"] * math.sin(2 * math.pi * (t - profile["phase_s"])
                                                                 / profile["period_s"])
    return profile["before"] if t < profile["at"] else profile["after"]


def integral(profile: Profile, t0: float, t1: float) -> float:
    """The area under the curve from t0 to t1 (t1 >= t0): core-seconds for a CPU profile."""
    shape = profile["shape"]
    if shape == "constant":
        return profile["value"] * (t1 - t0)
    if shape == "sine":
        omega = 2 * math.pi / profile["period_s"]
        phase = profile["phase_s"]
        return profile["mean"] * (t1 - t0) - profile["amplitude"] / omega * (
            math.cos(omega * (t1 - phase)) - math.cos(omega * (t0 - phase)))
    at = profile["at"]
    before = max(0.0, min(t1, at) - t0)
    return profile["before"] * before + profile["after"] * (t1 - t0 - before)
