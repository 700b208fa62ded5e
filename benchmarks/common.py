"""Shared helpers for the benchmarks: statistics, tables, result files."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Wide enough for the tables when the output goes to a file (rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 160)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_kb = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2**20, 1), "kernel": platform.release(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def summary(values: Sequence[float]) -> dict[str, float]:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), "command": " ".join([Path(sys.executable).name] + sys.argv),
            **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    console.print(f"raw figures: {path}")
    return path


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title)
    for h in headers:
        t.add_column(h)
    for row in rows:
        t.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(t)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[str]:
    """A temporary directory for one run's data, removed afterwards."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def livemig_env(settings) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LIVEMIG_DATA_DIR=settings.data_dir,
               LIVEMIG_DATABASE_URL=settings.database_url)
    if settings.zookeeper_hosts:
        env.update(LIVEMIG_ZOOKEEPER_HOSTS=settings.zookeeper_hosts, LIVEMIG_ZOOKEEPER_ROOT=settings.zookeeper_root,
                   LIVEMIG_ZOOKEEPER_SESSION_TIMEOUT=str(settings.zookeeper_session_timeout))
    return env


def livemig_cli(settings, *args: str, check: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    """Run the installed `livemig` command as an operator would; returns its wall time."""
    exe = ROOT / ".venv" / "bin" / "livemig"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "livemig.cli"]
    started = time.monotonic()
    proc = subprocess.run(cmd + list(args), env=livemig_env(settings), capture_output=True, text=True)
    wall = time.monotonic() - started
    if check and proc.returncode != 0:
        raise RuntimeError(f"livemig {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc, wall
