"""Runs one lab libvirtd inside its private mount/UTS namespace.

Started as `unshare --mount --propagation private --uts -- python -m
livemig.lab.subreaper HOST_DIR HOSTNAME`. It bind-mounts the host's private
state over libvirt's directories (visible only in this namespace, so they
vanish with it), becomes a child subreaper (PID 1 here reaps orphans only
every second or two, and libvirt waits for a dead QEMU's pid to vanish), runs
libvirtd in the foreground and reaps every child until libvirtd exits."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36
MOUNTS = {"lib": "/var/lib/libvirt", "cache": "/var/cache/libvirt", "log": "/var/log/libvirt",
          "etc": "/etc/libvirt"}


def main() -> None:
    host_dir, hostname = sys.argv[1], sys.argv[2]
    for sub, target in MOUNTS.items():
        source = os.path.join(host_dir, sub)
        os.makedirs(source, exist_ok=True)
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "--bind", source, target], check=True)
    # Runtime state on tmpfs, as /run is on a real host: libvirt fsyncs every
    # status file it rewrites, and several of those writes fall inside a
    # migration's downtime, where a disk-backed /run adds journal commits.
    # It lives as long as this namespace, so a restarted libvirtd finds it.
    os.makedirs("/run/libvirt", exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=64m", "livemig-lab-run", "/run/libvirt"],
                   check=True)
    socket.sethostname(hostname)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    stopping = False

    def start() -> subprocess.Popen:
        return subprocess.Popen(["/usr/sbin/libvirtd", "--listen", "--pid-file",
                                 os.path.join(host_dir, "libvirtd.pid")],
                                stdout=open(os.path.join(host_dir, "libvirtd.out"), "ab"), stderr=subprocess.STDOUT)

    daemon = start()

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        try:
            daemon.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            pid, _status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid != daemon.pid:
            continue
        if stopping:
            # A lab host that stops takes its guests along, as a powered-off host would.
            _kill_children()
            break
        # libvirtd died on its own (crashed, or killed by a test): restart it
        # as systemd would; it reconnects to its running QEMUs.
        daemon = start()
    sys.exit(0)


def _kill_children() -> None:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    main()
