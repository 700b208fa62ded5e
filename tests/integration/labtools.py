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


def guest(lab, index=0):
    return lab.state()["guests"][index]


def where(lab, lab_settings, g=None):
    """The one host that runs the guest (the first by default), checked against the inventory."""
    g = g or guest(lab)
    hosts = active_on(lab, g["uuid"])
    assert len(hosts) == 1, hosts
    assert inventory_host(lab_settings, g["uuid"]) == hosts[0]
    return hosts[0]


def other(lab, host):
    return lab.host_name(2) if host == lab.host_name(1) else lab.host_name(1)


def index_of(lab, host):
    return 1 if host == lab.host_name(1) else 2


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


def _console_size(guest) -> int:
    try:
        return os.path.getsize(guest["console"])
    except OSError:
        return 0


def guests_restored(lab, settings, homes: dict[str, str] | None = None) -> None:
    """The lab as tests expect it: every guest running on its home host (the
    first host, unless `homes` names another), paused ones resumed, and the
    inventory synced with the hosts."""
    import livemig

    ctx = livemig.admin_context("tests")
    hosts = range(1, len(lab.state()["hosts"]) + 1)
    for i in hosts:
        c = conn(lab, i)
        try:
            for dom in c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED):
                dom.resume()
        finally:
            c.close()
    livemig.sync_hosts(ctx, settings=settings)
    for g in lab.state()["guests"]:
        home = (homes or {}).get(g["name"], lab.host_name(1))
        on = active_on(lab, g["uuid"], hosts)
        assert len(on) == 1, f"{g['name']} runs on {on or 'no host'}: the lab is broken"
        if on[0] != home:
            # A guest on local storage moves only with its disk copied.
            options = {"copy_storage": "full"} if g.get("local_disk") else None
            livemig.migrate(ctx, g["name"], on[0], home, settings=settings, options=options)


def guests_health(lab) -> dict[str, tuple[str, int]]:
    """Each guest's boot id and the size of its console log, now."""
    from livemig.lab.echo import ask

    return {g["name"]: (ask(g["ip"], 9), _console_size(g)) for g in lab.state()["guests"]}


def health_problems(lab, before: dict[str, tuple[str, int]]) -> list[str]:
    """What went wrong with the guests since `before` (guests_health)."""
    from livemig.lab.echo import ask

    problems = []
    for g in lab.state()["guests"]:
        boot_id, offset = before[g["name"]]
        try:
            now = ask(g["ip"], 9)
        except OSError as exc:
            problems.append(f"{g['name']} does not answer: {exc}")
            continue
        if now != boot_id:
            problems.append(f"{g['name']} rebooted (boot id {boot_id} -> {now})")
        with open(g["console"], "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        problems += [f"{g['name']} console: {line}" for line in text.splitlines()
                     if any(w in line for w in ("Oops", "panic", "BUG"))]
    return problems


def virsh_placement(lab) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per domain uuid: the hosts that run it, and the hosts that define it
    (running or not), asked of every host with virsh, independently of livemig."""
    running: dict[str, list[str]] = {}
    defined: dict[str, list[str]] = {}
    for i in range(1, len(lab.state()["hosts"]) + 1):
        for flag, found in (("--state-running", running), ("--all", defined)):
            listing = subprocess.run(["virsh", "-c", lab.host_uri(i), "list", flag, "--uuid"], check=True,
                                     capture_output=True, text=True, timeout=30).stdout
            for uuid in listing.split():
                found.setdefault(uuid, []).append(lab.host_name(i))
    return running, defined


def inventory(settings) -> dict[str, str]:
    """Instance name -> host, as `livemig instance list` reports it."""
    import json

    proc = cli(settings, "instance", "list", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return {i["name"]: i["host"] for i in json.loads(proc.stdout)}


def assert_placed(lab, settings, expected: dict[str, str]) -> None:
    """Every guest runs on exactly the expected host, is defined there only,
    and the inventory says so."""
    running, defined = virsh_placement(lab)
    for g in lab.state()["guests"]:
        assert running.get(g["uuid"]) == [expected[g["name"]]], (g["name"], running.get(g["uuid"]))
        assert defined.get(g["uuid"]) == [expected[g["name"]]], (g["name"], defined.get(g["uuid"]))
    assert inventory(settings) == expected


def host_cpu_loads(settings, window_s: float) -> dict[str, float]:
    """Each host's CPU in cores as the planners see it: the sum of its
    instances' mean CPU over the last `window_s` seconds (a host with no
    sampled instance: 0.0). The lab's hosts share one kernel, so a host's own
    figure is the whole machine's; the instances' sums tell them apart."""
    from livemig.load.fleet import build_fleet

    with database_for(settings.database_url).reading() as s:
        fleet = build_fleet(s, window_s=window_s)
    loads = {name: 0.0 for name in fleet.hosts}
    for demand in fleet.instances.values():
        if demand.measured:
            loads[demand.host] += demand.cpu_mean
    return loads
