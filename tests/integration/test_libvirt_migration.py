"""Live migration of a real guest between two real libvirt hosts, through the
CLI, with a TCP stream kept open to the guest ("the SSH connection is not
terminated after live migration"), and the failure paths against the real
daemons."""
from __future__ import annotations

import os
import signal
import time

import libvirt
import pytest

import livemig
from livemig.lab.echo import EchoStream, ask
from livemig.lab.lab import FILTER_NAME
from livemig.services import services_for
from tests.integration.labtools import (
    active_on, cli, conn, console_problems, defined_on, guest, has_filter, has_secret, index_of, inventory_host,
    migration_row, other, qemu_processes_for, wait_for_running_migration, where,
)


def start_slow_migration(lab, lab_settings, mib_s, env=None):
    """A bandwidth-limited migration by a background CLI process, once its
    hypervisor job has moved some memory."""
    g = guest(lab)
    src = where(lab, lab_settings)
    dst = other(lab, src)
    boot_id = ask(g["ip"], 9)
    runner = cli(lab_settings, "migrate", "--live", "-q", src, g["name"], dst,
                 env={"LIVEMIG_BANDWIDTH_MIB_S": str(mib_s), **(env or {})}, background=True)
    return g, src, dst, boot_id, runner, wait_for_running_migration(lab_settings)


def test_round_trips_keep_the_tcp_stream(lab, lab_settings):
    g = guest(lab)
    boot_id = ask(g["ip"], 9)
    gaps = []
    with EchoStream(g["ip"], 7, period_s=0.02) as stream:
        time.sleep(0.5)
        for _ in range(4):
            src = where(lab, lab_settings)
            dst = other(lab, src)
            stream.reset_gap()
            proc = cli(lab_settings, "migrate", "--live", src, g["name"], dst)
            assert proc.returncode == 0, proc.stderr
            assert f"{g['name']} {src} -> {dst} completed" in proc.stdout
            time.sleep(0.3)
            gaps.append(stream.max_gap_s)
            # Exactly one host runs it, the inventory agrees, it did not reboot.
            assert active_on(lab, g["uuid"]) == [dst]
            assert defined_on(lab, g["uuid"]) == [dst]
            assert inventory_host(lab_settings, g["uuid"]) == dst
            assert ask(g["ip"], 9) == boot_id
        stream.settle()
        assert stream.error is None
    assert stream.in_order_without_loss and len(stream.received) == stream.sent > 100
    assert console_problems(g) == []
    print(f"largest client-visible gaps per migration (ms): {[round(x * 1000) for x in gaps]}")


def test_volume_and_network_pre_operations_follow_the_vm(lab, lab_settings):
    g = guest(lab)
    src = where(lab, lab_settings)
    dst = other(lab, src)
    si, di = index_of(lab, src), index_of(lab, dst)
    assert has_filter(lab, si, FILTER_NAME) and has_secret(lab, si, g["secret_usage"])
    assert not has_filter(lab, di, FILTER_NAME) and not has_secret(lab, di, g["secret_usage"])
    assert ask(g["ip"], 10, "before-move") == "before-move"
    proc = cli(lab_settings, "migrate", "--live", src, g["name"], dst)
    assert proc.returncode == 0, proc.stderr
    assert has_filter(lab, di, FILTER_NAME) and has_secret(lab, di, g["secret_usage"])
    # The lab defined them on the guest's first host before livemig ran:
    # they are not livemig's to remove (issue 13 item 7).
    assert has_filter(lab, si, FILTER_NAME) and has_secret(lab, si, g["secret_usage"])
    # The guest still reads and writes its authenticated volume on the new host.
    assert ask(g["ip"], 10, "after-move") == "after-move"
    # Back: what livemig defined on dst is removed once the guest leaves.
    proc = cli(lab_settings, "migrate", "--live", dst, g["name"], src)
    assert proc.returncode == 0, proc.stderr
    assert not has_filter(lab, di, FILTER_NAME) and not has_secret(lab, di, g["secret_usage"])
    assert has_filter(lab, si, FILTER_NAME) and has_secret(lab, si, g["secret_usage"])
    assert ask(g["ip"], 10, "after-return") == "after-return"


def test_destination_daemon_down_is_a_clear_precheck_error(lab, lab_settings):
    g = guest(lab)
    src = where(lab, lab_settings)
    dst = other(lab, src)
    before = cli(lab_settings, "migration", "list", "--format", "json").stdout
    lab.stop_host(index_of(lab, dst))
    try:
        t0 = time.monotonic()
        proc = cli(lab_settings, "migrate", "--live", src, g["name"], dst)
        assert proc.returncode == 6
        assert len(proc.stderr.strip().splitlines()) == 1 and "unreachable" in proc.stderr
        assert time.monotonic() - t0 < 30
    finally:
        lab.start_host(index_of(lab, dst))
    assert cli(lab_settings, "migration", "list", "--format", "json").stdout == before
    assert where(lab, lab_settings) == src


def test_abort_during_a_slow_migration_keeps_vm_on_source(lab, lab_settings):
    g, src, dst, boot_id, runner, m = start_slow_migration(lab, lab_settings, mib_s=1)
    # Pre-operations ran: the destination has the filter and secret now.
    assert has_filter(lab, index_of(lab, dst), FILTER_NAME)
    proc = cli(lab_settings, "migration", "abort", str(m.id))
    assert proc.returncode == 0, proc.stderr
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 1, err
    assert "cancelled" in err
    assert migration_row(lab_settings, m.id).status == "cancelled"
    assert where(lab, lab_settings) == src and ask(g["ip"], 9) == boot_id
    # The revert removed what the pre-operations defined on the destination.
    assert not has_filter(lab, index_of(lab, dst), FILTER_NAME)
    assert not has_secret(lab, index_of(lab, dst), g["secret_usage"])
    assert defined_on(lab, g["uuid"]) == [src]
    assert ask(g["ip"], 10, "after-abort") == "after-abort"


def test_allowed_downtime_starts_low_and_rises_in_steps(lab, lab_settings):
    # 128 MiB guest: 96 s/GiB makes a step every 12 s (room for a loaded
    # machine, load average 16 on 2 cores seen, to notice the job before the
    # first step is over: 6 s was not); 4 steps to 400 ms.
    g, src, dst, boot_id, runner, m = start_slow_migration(lab, lab_settings, mib_s=1, env={
        "LIVEMIG_MAX_DOWNTIME_MS": "400", "LIVEMIG_DOWNTIME_STEPS": "4",
        "LIVEMIG_DOWNTIME_STEP_DELAY_S_PER_GIB": "96"})
    c = conn(lab, index_of(lab, src))
    try:
        dom = c.lookupByUUIDString(g["uuid"])
        seen = [dom.migrateGetMaxDowntime(0)]
        deadline = time.monotonic() + 60
        while seen[-1] < 250 and time.monotonic() < deadline:
            time.sleep(0.2)
            value = dom.migrateGetMaxDowntime(0)
            if value != seen[-1]:
                seen.append(value)
    finally:
        c.close()
    assert cli(lab_settings, "migration", "abort", str(m.id)).returncode == 0
    runner.communicate(timeout=120)
    # Read while the job ran: the first step, then the schedule's next ones.
    assert seen[0] == 100, seen
    assert seen[1:3] == [175, 250], seen
    assert where(lab, lab_settings) == src and ask(g["ip"], 9) == boot_id


def test_destination_killed_during_migration_rolls_back(lab, lab_settings):
    g, src, dst, boot_id, runner, _ = start_slow_migration(lab, lab_settings, mib_s=1)
    # The destination's libvirtd dies (its supervisor restarts it).
    os.kill(lab.libvirtd_pid(index_of(lab, dst)), signal.SIGKILL)
    out, err = runner.communicate(timeout=180)
    assert runner.returncode == 1, err
    assert "failed" in err
    assert where(lab, lab_settings) == src and ask(g["ip"], 9) == boot_id
    # No stale incoming QEMU on the destination after the rollback.
    assert defined_on(lab, g["uuid"]) == [src]
    assert len(qemu_processes_for(g["uuid"])) == 1
    assert not has_filter(lab, index_of(lab, dst), FILTER_NAME)


def test_controller_killed_mid_migration_then_resume(lab, lab_settings):
    # Under TCG a guest can come up corrupted after a migration of many
    # iterations (NOTES.md; once here: "BUG: scheduling while atomic" on its
    # console after a 3 MiB/s migration whose allowed downtime started at
    # 30 ms). So: no TCP stream during it, a job of about 12 s (long enough
    # to kill the controller in), and the whole allowed downtime from the
    # start, so that QEMU switches over at the end of its first pass.
    g, src, dst, boot_id, runner, m = start_slow_migration(lab, lab_settings, mib_s=8,
                                                           env={"LIVEMIG_DOWNTIME_STEPS": "1"})
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    assert migration_row(lab_settings, m.id).status == "running"
    proc = cli(lab_settings, "migration", "resume", str(m.id), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "completed" in proc.stdout
    with EchoStream(g["ip"], 7) as stream:
        time.sleep(0.5)
    assert stream.error is None and stream.in_order_without_loss and stream.received
    assert console_problems(g) == []
    assert where(lab, lab_settings) == dst and ask(g["ip"], 9) == boot_id
    notes = cli(lab_settings, "migration", "show", str(m.id), "--format", "json").stdout
    # It followed libvirt's job (or found it done) instead of starting another.
    assert "following it" in notes or "not migrating again" in notes
    assert defined_on(lab, g["uuid"]) == [dst]


def test_close_releases_libvirt_connections_and_the_next_call_reopens_them(lab, lab_settings):
    ctx = livemig.admin_context("tests")
    livemig.sync_hosts(ctx, settings=lab_settings)  # talks to both daemons from this process
    driver = services_for(lab_settings).drivers.for_uri(lab.host_uri(1))
    opened = list(driver._conns.values())
    assert len(opened) == 2 and all(c.isAlive() for c in opened)
    livemig.close()
    for c in opened:
        with pytest.raises(libvirt.libvirtError, match="invalid connection pointer"):
            c.isAlive()
    # Reopened: both daemons answer again, and the one guest is seen.
    assert sum(livemig.sync_hosts(ctx, settings=lab_settings).values()) == 1
    livemig.close()


def test_an_exception_inside_the_hypervisor_call_is_the_reason(lab, lab_settings, capfd):
    """Item 10: the settings refuse a negative bandwidth now, but whatever else
    the libvirt binding raises inside the migration thread (here its
    OverflowError for a negative unsigned parameter) must be the error the
    task sees, not a traceback on stderr and a false 'reported success'."""
    from livemig.drivers.base import MigrationOptions
    from livemig.drivers.base import DriverError

    g = guest(lab)
    src = where(lab, lab_settings)
    dst = other(lab, src)
    driver = services_for(lab_settings).drivers.for_uri(lab.host_uri(1))
    with pytest.raises(DriverError, match="raised OverflowError"):
        driver.migrate(lab.host_uri(index_of(lab, src)), lab.host_uri(index_of(lab, dst)), g["uuid"],
                       MigrationOptions(bandwidth_mib_s=-5, poll_interval_s=0.1, timeout_s=30))
    assert "Traceback" not in capfd.readouterr().err
    assert active_on(lab, g["uuid"]) == [src]


def test_guest_suspended_during_a_slow_migration_stays_paused_on_source(lab, lab_settings):
    """Issue 13 item 1: a guest paused by an operator mid-migration is neither
    moved nor terminated: the migration is aborted and ends `failed`, naming
    the state, and the guest stays (paused) on its source."""
    g, src, dst, boot_id, runner, m = start_slow_migration(lab, lab_settings, mib_s=1)
    c = conn(lab, index_of(lab, src))
    try:
        dom = c.lookupByUUIDString(g["uuid"])
        dom.suspend()  # as `virsh suspend` does
        out, err = runner.communicate(timeout=120)
        assert runner.returncode == 1, err
        row = migration_row(lab_settings, m.id)
        assert row.status == "failed", row.error_reason
        assert "paused" in row.error_reason
        # libvirt resumes a guest it counts as paused for the migration once
        # the job is aborted: paused or running, it is on its source.
        assert dom.state()[0] in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_RUNNING)
        assert defined_on(lab, g["uuid"]) == [src]  # nothing on the destination
        assert len(qemu_processes_for(g["uuid"])) == 1
        assert inventory_host(lab_settings, g["uuid"]) == src
    finally:
        if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
        c.close()
    livemig.sync_hosts(livemig.admin_context("tests"), settings=lab_settings)
    assert where(lab, lab_settings) == src and ask(g["ip"], 9) == boot_id
