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

import pytest

import livemig
import livemig.errors
from livemig.lab.control import GuestControl, GuestControlError
from livemig.load.sampler import Sampler
from livemig.services import services_for
from tests.integration.labtools import (
    conn, guest, host_cpu_loads, index_of, migration_row, other, wait_for_running_migration, where)

CTX = livemig.admin_context("tests")


@pytest.fixture
def control(lab):
    g = guest(lab)
    guest_control = GuestControl(g["ip"])
    yield guest_control
    guest_control.cpu(False)
    guest_control.stop()


def _host_loads(settings) -> dict[str, float]:
    # Over the last 1.5 s: the last pass's samples only, passes being 3 s long.
    return host_cpu_loads(settings, window_s=1.5)


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
    idle = _host_loads(lab_settings)
    control.cpu(True)
    time.sleep(0.5)
    _sample(lab_settings, 3.0)
    busy = _host_loads(lab_settings)
    # Under TCG one busy vCPU is about one host core on a quiet machine; an
    # idle TCG guest uses a few percent. The machine is shared: with a load
    # average of 15 on its 2 cores the busy loop got 0.18 of a core against
    # 0.03 idle. So the busy figure must stand well clear of the idle one,
    # in proportion, rather than by a fixed half core.
    assert busy[host] > max(idle[host] + 0.1, 4 * idle[host]), (idle, busy)
    assert busy[idle_host] == 0.0  # no instance there
    control.cpu(False)
    time.sleep(0.5)
    _sample(lab_settings, 3.0)
    assert _host_loads(lab_settings)[host] < busy[host] / 2


def test_a_dirtying_guest_shows_a_dirty_rate_and_is_intact_after_an_aborted_migration(lab, lab_settings, control):
    g = guest(lab)
    source = where(lab, lab_settings)
    # 16 MiB of random data rewritten over and over: more than a 5 MiB/s
    # link copies, so the migration never converges; QEMU measures the dirty
    # rate at the end of each pass, and the first (mostly zero pages) ends
    # within seconds.
    control.dirty(16, random=True)
    outcome: dict = {}

    def migrate() -> None:
        try:
            outcome["view"] = livemig.migrate(CTX, g["name"], source, other(lab, source),
                                              options={"bandwidth_mib_s": 5}, settings=lab_settings)
        except livemig.errors.LivemigError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=migrate, daemon=True)
    worker.start()
    watch = conn(lab, index_of(lab, source))
    rate = 0
    try:
        dom = watch.lookupByUUIDString(g["uuid"])
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not rate and worker.is_alive():
            time.sleep(0.5)
            rate = dom.jobStats(0).get("memory_dirty_rate", 0)
        print(f"memory_dirty_rate {rate} pages/s")
    finally:
        running = wait_for_running_migration(lab_settings, min_processed=0, timeout=30)
        livemig.abort(CTX, running.id, settings=lab_settings)
        worker.join(60)
        watch.close()
    assert rate > 0  # pages per second
    assert migration_row(lab_settings, running.id).status == "cancelled"
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
