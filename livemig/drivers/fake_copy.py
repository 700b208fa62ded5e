"""The fake driver's model of a busy guest's memory copy: pre-copy passes
over a link of `bandwidth` MiB/s while the guest dirties `dirty` MiB/s
(less auto-converge's throttle), post-copy, and pause-to-complete.

As QEMU: a pass copies what the previous one left dirty; at the end of a
pass the job switches over if what is dirty fits in the allowed downtime at
the link's speed. A guest that dirties as fast as the link copies never
converges unless it is throttled, switched to post-copy or paused. All in
plain JSON (the job's "copy" dict), advanced to a wall-clock instant, so the
job carries on while nobody watches, like a real one."""
from __future__ import annotations

from typing import Any

# What a post-copy switchover costs (NOTES: 3-6 ms here).
POST_COPY_DOWNTIME_MS = 4
# Enough for any job that converges; a job that does not has passes of
# memory/bandwidth seconds each, so this bounds nothing real.
MAX_STEPS = 100_000


def new_copy(memory_mib: float, bandwidth_mib_s: float, dirty_mib_s: float, postcopy_bandwidth_mib_s: float,
             started: float) -> dict[str, Any]:
    return {"memory": float(memory_mib), "bandwidth": float(bandwidth_mib_s), "dirty": float(dirty_mib_s),
            "postcopy_bandwidth": float(postcopy_bandwidth_mib_s or bandwidth_mib_s), "pass": 1,
            "left": float(memory_mib), "dirtied": 0.0, "copied": 0.0, "at": started, "mode": "pre-copy",
            "paused_at": None, "done_at": None, "downtime_ms": None}


def throttle_of(converge: list[int] | None, pass_no: int) -> int | None:
    """Auto-converge's throttle in this pass, as QEMU's: none in the first
    pass, then `initial`, `increment` more each pass, at most 99 %."""
    if not converge or pass_no < 2:
        return None
    initial, increment = converge
    return min(99, initial + increment * (pass_no - 2))


def advance(copy: dict[str, Any], now: float, max_downtime_ms: int, converge: list[int] | None) -> bool:
    """Runs the copy on to `now`; True once it has completed (done_at and
    downtime_ms then say when and how long the guest stood still)."""
    if copy["done_at"] is not None:
        return True
    t = copy["at"]
    for _ in range(MAX_STEPS):
        if t >= now:
            break
        if copy["mode"] == "post-copy":
            # The guest runs on the destination: the rest is fetched once.
            rate = copy["postcopy_bandwidth"]
            dt = min(now - t, copy["left"] / rate)
            copy["left"] -= rate * dt
            copy["copied"] += rate * dt
            t += dt
            if copy["left"] <= 1e-9:
                copy["left"] = 0.0
                _done(copy, t, POST_COPY_DOWNTIME_MS)
                break
            continue
        throttle = throttle_of(converge, copy["pass"]) or 0
        dirty = 0.0 if copy["mode"] == "paused" else copy["dirty"] * (1 - throttle / 100.0)
        rate = copy["bandwidth"]
        dt = min(now - t, copy["left"] / rate)
        copy["left"] -= rate * dt
        copy["copied"] += rate * dt
        copy["dirtied"] = min(copy["memory"], copy["dirtied"] + dirty * dt)
        t += dt
        if copy["left"] > 1e-9:
            continue
        # The end of a pass: switch over if the dirty rest fits the downtime.
        rest_ms = copy["dirtied"] / rate * 1000.0
        if rest_ms <= max_downtime_ms or copy["dirtied"] <= 1e-9:
            paused_ms = (t - copy["paused_at"]) * 1000.0 if copy["paused_at"] is not None else 0.0
            _done(copy, t + rest_ms / 1000.0, int(round(paused_ms + rest_ms)))
            break
        copy["pass"] += 1
        copy["left"], copy["dirtied"] = copy["dirtied"], 0.0
    copy["at"] = max(t, copy["at"])
    return copy["done_at"] is not None


def _done(copy: dict[str, Any], at: float, downtime_ms: int) -> None:
    copy["done_at"] = at
    copy["downtime_ms"] = max(1, downtime_ms)
    copy["left"] = copy["dirtied"] = 0.0


def start_post_copy(copy: dict[str, Any]) -> None:
    copy["mode"] = "post-copy"
    copy["left"] += copy["dirtied"]
    copy["dirtied"] = 0.0


def pause(copy: dict[str, Any], now: float) -> None:
    copy["mode"] = "paused"
    copy["paused_at"] = now


def remaining_bytes(copy: dict[str, Any]) -> int:
    """What jobStats calls memory_remaining: the rest of this pass."""
    return int(copy["left"] * 2**20)
