"""All benchmarks, one after another: `make bench`."""
from __future__ import annotations

import subprocess
import sys

from benchmarks.common import ROOT

for module in ("benchmarks.downtime_vs_virsh", "benchmarks.libvirt_phases", "benchmarks.engine_throughput",
               "benchmarks.takeover_latency"):
    print(f"== {module}", flush=True)
    subprocess.run([sys.executable, "-m", module], cwd=ROOT, check=False)
