"""Conductor processes to start, freeze (SIGSTOP) and wake, and the rows a
frozen conductor must leave alone: shared by the functional conductor tests
(fake hypervisors) and the lab's fencing test (real libvirt)."""
from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import sqlalchemy as sa

from livemig.persistence.database import database_for
from livemig.persistence.models import Migration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Conductors:
    """Conductor processes (tests.helpers_conductor) with the settings' data
    directory, ZooKeeper and timings; each logs to DATA_DIR/NAME.log."""

    def __init__(self, settings):
        self.settings = settings
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self):
        s = self.settings
        env = dict(os.environ, PYTHONPATH=ROOT, LIVEMIG_DATA_DIR=s.data_dir, LIVEMIG_ZOOKEEPER_HOSTS=s.zookeeper_hosts,
                   LIVEMIG_ZOOKEEPER_ROOT=s.zookeeper_root,
                   LIVEMIG_ZOOKEEPER_SESSION_TIMEOUT=str(s.zookeeper_session_timeout),
                   LIVEMIG_POLL_INTERVAL_S=str(s.poll_interval_s), LIVEMIG_QUEUE_TIMEOUT_S=str(s.queue_timeout_s))
        env.pop("LIVEMIG_DATABASE_URL", None)
        return env

    def start(self, name, step=None, when=None, env=None):
        args = [sys.executable, "-m", "tests.helpers_conductor", name] + ([step, when] if step else [])
        log = open(os.path.join(self.settings.data_dir, f"{name}.log"), "w")
        self.procs[name] = subprocess.Popen(args, cwd=ROOT, env={**self.env(), **(env or {})}, stdout=log,
                                            stderr=subprocess.STDOUT)
        return self.procs[name]

    def log(self, name) -> str:
        with open(os.path.join(self.settings.data_dir, f"{name}.log"), errors="replace") as f:
            return f.read()

    def stop_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait()


def controller_id(proc) -> str:
    """How a conductor process names itself in the events it writes."""
    return f"{os.uname().nodename}:{proc.pid}"


def _nobody_holds(settings, lock_files: Iterable[Path]) -> bool:
    """Whether, right now, no process holds one of `lock_files` (flock) or
    the SQLite database's write lock (tried without waiting)."""
    for lock_path in lock_files:
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # closing the file releases a lock we took
    url = sa.engine.make_url(settings.database_url)
    if url.get_backend_name() != "sqlite":
        return True  # PostgreSQL locks rows: a frozen holder blocks only its own rows
    conn = sqlite3.connect(url.database, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return True


def freeze(proc, settings, lock_files: Iterable[Path] = (), timeout=30.0):
    """SIGSTOP a conductor at a moment it holds no lock but its claim. The
    fake hypervisors live in lock-guarded files (`lock_files`) and the
    embedded database is one SQLite file: a conductor frozen inside one of
    those locks would freeze every other process with it (a real hypervisor
    is its own daemon; PostgreSQL locks rows, not the database), which is
    not the freeze under test. Stopped, it cannot take a lock: if none is
    held once it has stopped, none will be until SIGCONT."""
    lock_files = list(lock_files)
    deadline = time.monotonic() + timeout
    while True:
        proc.send_signal(signal.SIGSTOP)
        wait_stopped(proc)
        if _nobody_holds(settings, lock_files):
            return
        proc.send_signal(signal.SIGCONT)
        assert time.monotonic() < deadline, "the conductor never let go of its locks"
        time.sleep(0.02)


def wait_stopped(proc, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "T":
                return
        assert time.monotonic() < deadline, f"process {proc.pid} did not stop"
        time.sleep(0.005)


def flow_rows(settings, migration_id):
    """TaskFlow's own rows of the migration's flow: the flow and each atom."""
    db = database_for(settings.database_url)
    with db.session() as s:
        flow_id = s.get(Migration, migration_id).flow_id
    with db.engine.connect() as conn:
        flow = conn.execute(sa.text("SELECT state, meta FROM flowdetails WHERE uuid = :u"), {"u": flow_id}).one()
        atoms = conn.execute(sa.text("SELECT name, state, intention, results, failure, revert_results, "
                                     "revert_failure, version FROM atomdetails WHERE parent_uuid = :u "
                                     "ORDER BY name"), {"u": flow_id}).all()
    return tuple(flow), [tuple(a) for a in atoms]


def migration_fields(settings, migration_id):
    """What a stale writer could change on the migration's row."""
    with database_for(settings.database_url).session() as s:
        m = s.get(Migration, migration_id)
        return (m.status, m.progress, m.error_reason, m.claim_epoch, m.memory_processed, m.finished_at)
