"""Looking at the real lab: where a domain runs, what each host defines."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import libvirt

from livemig.persistence.database import database_for
from livemig.persistence.models import Instance, Migration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(settings, *args, env=None, background=False):
    full_env = dict(os.environ, LIVEMIG_DATA_DIR=settings.data_dir, PYTHONPATH=ROOT, LIVEMIG_POLL_INTERVAL_S="0.1",
                    COLUMNS="200")
    full_env.pop("LIVEMIG_DATABASE_URL", None)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "livemig.cli", *args]
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)


def conn(lab, index):
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    return libvirt.open(lab.host_uri(index))


def _hosts_with(lab, uuid, hosts, running_only: bool) -> list[str]:
    found = []
    for i in hosts:
        c = conn(lab, i)
        try:
            try:
                dom = c.lookupByUUIDString(uuid)
            except libvirt.libvirtError:
                continue
            if not running_only or dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                found.append(lab.host_name(i))
        finally:
            c.close()
    return found


def active_on(lab, uuid, hosts=(1, 2)) -> list[str]:
    return _hosts_with(lab, uuid, hosts, running_only=True)


def defined_on(lab, uuid, hosts=(1, 2)) -> list[str]:
    return _hosts_with(lab, uuid, hosts, running_only=False)


def has_filter(lab, index, name) -> bool:
    c = conn(lab, index)
    try:
        c.nwfilterLookupByName(name)
        return True
    except libvirt.libvirtError:
        return False
    finally:
        c.close()


def has_secret(lab, index, usage) -> bool:
    c = conn(lab, index)
    try:
        c.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage)
        return True
    except libvirt.libvirtError:
        return False
    finally:
        c.close()


def inventory_host(settings, uuid) -> str | None:
    with database_for(settings.database_url).session() as s:
        return s.get(Instance, uuid).host


def migration_row(settings, migration_id) -> Migration:
    with database_for(settings.database_url).session() as s:
        return s.get(Migration, migration_id)


def wait_for_running_migration(settings, min_processed: int = 1, timeout: float = 60) -> Migration:
    """The newest migration, once the hypervisor job has moved some memory."""
    import sqlalchemy as sa
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with database_for(settings.database_url).session() as s:
            m = s.scalars(sa.select(Migration).order_by(Migration.id.desc())).first()
            if m is not None and m.status == "running" and m.memory_processed >= min_processed:
                return m
        time.sleep(0.1)
    raise TimeoutError("no migration reached the running state with progress")


def console_problems(guest) -> list[str]:
    with open(guest["console"], errors="replace") as f:
        text = f.read()
    return [line for line in text.splitlines() if any(w in line for w in ("Oops", "panic", "BUG"))]


def qemu_processes_for(uuid) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in cmd and uuid in cmd:
                found.append(int(entry))
    return found
