"""Load data on the real lab: the guest's control port makes it CPU-busy and
memory-dirtying, the sampler sees the busy guest's host rise above an idle
one, libvirt reports the dirty rate, and `check` says the guest's memory came
through a migration intact.

The lab's hosts share one kernel, so a host's own CPU figure (libvirt's
getCPUStats) is the whole machine's, the same on every lab host, and moves
with whatever else runs here: what tells the hosts apart is the sum of their
instances' samples, which is what the planners read."""
from __future__ import annotations

import threading
import time

import libvirt
import pytest

import livemig
from livemig.lab.control import GuestControl, GuestControlError
from livemig.load.fleet import build_fleet
from livemig.load.sampler import Sampler
from livemig.persistence.database import database_for
from livemig.services import services_for
from tests.integration.labtools import conn, guest, index_of, other, where

CTX = livemig.admin_context("tests")


@pytest.fixture
def control(lab):
    g = guest(lab)
    guest_control = GuestControl(g["ip"])
    yield guest_control
    guest_control.cpu(False)
    guest_control.stop()


def _host_loads(settings, window_s: float) -> dict[str, float]:
    """Each host's CPU in cores as the planners see it: its instances' means."""
    with database_for(settings.database_url).reading() as s:
        fleet = build_fleet(s, window_s=window_s)
    loads = {name: 0.0 for name in fleet.hosts}
    for demand in fleet.instances.values():
        if demand.measured:
            loads[demand.host] += demand.cpu_mean
    return loads


def _sample(settings, seconds: float) -> float:
    """Sample every host over `seconds`; returns when the pass began (for a window)."""
    services = services_for(settings)
    began = time.monotonic()
    report = Sampler(services.db, services.drivers, settings).sample(settle_s=seconds)
    assert report.skipped == {}
    return began


def test_a_cpu_busy_guest_makes_its_host_measurably_loaded(lab, lab_settings, control):
    host = where(lab, lab_settings)
    idle_host = other(lab, host)
    control.cpu(False)
    _sample(lab_settings, 3.0)
    idle = _host_loads(lab_settings, window_s=4.0)
    control.cpu(True)
    time.sleep(0.5)
    _sample(lab_settings, 3.0)
    busy = _host_loads(lab_settings, window_s=4.0)
    # Under TCG one busy vCPU is up to one host core (0.48-0.9 measured: the
    # rest of this 2-core machine's load takes its share); an idle TCG guest
    # uses a few percent.
    assert busy[host] > idle[host] + 0.25, (idle, busy)
    assert busy[idle_host] == 0.0  # no instance there
    control.cpu(False)
    time.sleep(0.5)
    _sample(lab_settings, 3.0)
    assert _host_loads(lab_settings, window_s=4.0)[host] < busy[host] - 0.25


def test_a_dirtying_guest_shows_a_dirty_rate_and_is_intact_after_an_aborted_migration(lab, lab_settings, control):
    g = guest(lab)
    source = where(lab, lab_settings)
    index = index_of(lab, source)
    dest = lab.host_uri(3 - index)
    control.dirty(32)
    src_conn, watch = conn(lab, index), conn(lab, index)
    dom, watched = src_conn.lookupByUUIDString(g["uuid"]), watch.lookupByUUIDString(g["uuid"])
    failure: dict = {}

    def migrate() -> None:
        try:
            # 1 MiB/s: a 128 MiB guest would need minutes; aborted below.
            dom.migrateToURI3(dest, {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 1},
                              libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER)
        except libvirt.libvirtError as exc:
            failure["code"] = exc.get_error_code()

    worker = threading.Thread(target=migrate, daemon=True)
    worker.start()
    rate = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not rate:
            time.sleep(0.5)
            stats = watched.jobStats(0)
            rate = stats.get("memory_dirty_rate", 0)
    finally:
        watched.abortJob()
        worker.join(30)
        src_conn.close()
        watch.close()
    assert rate > 0
    assert failure.get("code") == libvirt.VIR_ERR_OPERATION_ABORTED
    control.stop()
    assert where(lab, lab_settings) == source and control.check() is True


def test_check_says_ok_after_a_migration(lab, lab_settings, control):
    source = where(lab, lab_settings)
    boot_id = control.bootid()
    assert control.check() is True
    view = livemig.migrate(CTX, guest(lab)["name"], source, other(lab, source), settings=lab_settings)
    assert view.status == "completed"
    assert where(lab, lab_settings) == other(lab, source)
    assert control.check() is True and control.bootid() == boot_id


def test_the_control_port_refuses_bad_commands(lab, control):
    with pytest.raises(GuestControlError, match="dirty takes MiB from 1 to 64"):
        control.dirty(65)
    with pytest.raises(GuestControlError, match="unknown command 'spin'"):
        control.ask("spin")
