"""Fencing on the real lab (issue 13 item 5): a conductor frozen (SIGSTOP)
in the middle of a real, bandwidth-limited libvirt migration, past its
ZooKeeper session, loses the migration to another conductor, which takes
over libvirt's running job and finishes it; woken (SIGCONT), the stale
conductor changes nothing: not the flow's rows, not the migration's, not
an event, not where the VM runs; and the guest's TCP stream loses no line."""
from __future__ import annotations

import signal
import time
import uuid

import pytest
import sqlalchemy as sa

import livemig
from livemig.lab.echo import EchoStream, ask
from livemig.persistence.database import database_for
from livemig.persistence.models import Event
from livemig.services import services_for
from tests.helpers_freeze import Conductors, controller_id, flow_rows, freeze, migration_fields
from tests.integration.labtools import (
    active_on, console_problems, defined_on, guest, inventory_host, other, qemu_processes_for, wait_for_running_migration,
    where,
)

CTX = livemig.admin_context("tests")
FINAL = ("completed", "failed", "cancelled", "error")
# The whole allowed downtime from the start: QEMU switches over at the end of
# its first pass (a TCG guest can come up corrupted after many iterations,
# NOTES.md), so the job lasts about 128 MiB / 8 MiB/s = 16 s.
SLOW = {"bandwidth_mib_s": 8}
CONDUCTOR_ENV = {"LIVEMIG_DOWNTIME_STEPS": "1"}


@pytest.fixture
def zk_lab_settings(lab_settings, zookeeper):
    settings = lab_settings.replace(zookeeper_hosts=zookeeper.hosts, zookeeper_session_timeout=2.0,
                                    zookeeper_root=f"/livemig-labtest-{uuid.uuid4().hex[:8]}",
                                    queue_timeout_s=120.0)
    yield settings
    livemig.close()  # this process's ZooKeeper session and connections


@pytest.fixture
def lab_conductors(zk_lab_settings):
    c = Conductors(zk_lab_settings)
    yield c
    c.stop_all()


def wait_final(settings, migration_id, timeout=240.0):
    deadline = time.monotonic() + timeout
    while (view := livemig.show_migration(migration_id, settings=settings)).status not in FINAL:
        assert time.monotonic() < deadline, f"migration {migration_id} is still {view.status}"
        time.sleep(0.2)
    return view


def events_after(settings, migration_id, event_id, controller):
    """Events of the migration, or by `controller`, newer than `event_id`."""
    with database_for(settings.database_url).session() as s:
        rows = s.scalars(sa.select(Event).where(
            Event.id > event_id, sa.or_(Event.migration_id == migration_id, Event.controller == controller)))
        return [(e.migration_id, e.kind, e.name, e.state, e.controller, e.message) for e in rows]


def last_event_id(settings) -> int:
    with database_for(settings.database_url).session() as s:
        return s.scalar(sa.select(sa.func.max(Event.id))) or 0


def test_frozen_conductor_changes_nothing_on_the_lab(lab, zk_lab_settings, lab_conductors):
    settings = zk_lab_settings
    g = guest(lab)
    src = where(lab, settings)
    dst = other(lab, src)
    boot_id = ask(g["ip"], 9)
    frozen = lab_conductors.start("frozen", env=CONDUCTOR_ENV)
    with EchoStream(g["ip"], 7, period_s=0.05) as stream:
        view = livemig.migrate(CTX, g["name"], src, dst, wait=False, settings=settings, options=SLOW)
        # Frozen while libvirt's job is moving memory: the job goes on in the
        # source's libvirtd, the conductor's call to it waits.
        m = wait_for_running_migration(settings, min_processed=8 * 2**20, timeout=120)
        assert m.id == view.id
        freeze(frozen, settings)
        frozen_at = time.monotonic()
        lab_conductors.start("rescuer", env=CONDUCTOR_ENV)
        done = wait_final(settings, view.id)
        assert done.status == "completed", done.error_reason
        assert time.monotonic() - frozen_at > settings.zookeeper_session_timeout
        deadline = time.monotonic() + 60
        while flow_rows(settings, view.id)[0][0] != "SUCCESS":
            assert time.monotonic() < deadline, "the rescuer's flow never ended"
            time.sleep(0.2)
        flow_before = flow_rows(settings, view.id)
        row_before = migration_fields(settings, view.id)
        assert row_before[3] == 2  # the frozen conductor's claim epoch, then the rescuer's
        last_event = last_event_id(settings)
        assert frozen.poll() is None, "the frozen conductor died while stopped"
        frozen.send_signal(signal.SIGCONT)
        # Its libvirt call returns (the job ended long ago), it looks at the
        # hosts, tries to record the outcome, and finds its claim superseded:
        # it did wake and try. Then a few seconds more for anything after.
        deadline = time.monotonic() + 90
        while "was superseded" not in lab_conductors.log("frozen"):
            assert time.monotonic() < deadline, lab_conductors.log("frozen")
            time.sleep(0.5)
        time.sleep(5.0)
        stream.settle()
    # Nothing it did after waking reached the database.
    assert flow_rows(settings, view.id) == flow_before
    assert migration_fields(settings, view.id) == row_before
    later = events_after(settings, view.id, last_event, controller_id(frozen))
    assert later == []
    # The rescuer followed libvirt's job (or found it done): no second migrate call.
    notes = [e.message for e in livemig.show_migration(view.id, settings=settings).events if e.kind == "note"]
    assert any("following it" in n or "not migrating again" in n for n in notes), notes
    rescuer_steps = {e.name for e in livemig.show_migration(view.id, settings=settings).events
                     if e.kind == "step" and e.controller == controller_id(lab_conductors.procs["rescuer"])}
    assert "migrate-domain" in rescuer_steps
    # The VM is on exactly one host, the inventory agrees, the guest did not reboot or crash.
    assert active_on(lab, g["uuid"]) == [dst]
    assert defined_on(lab, g["uuid"]) == [dst]
    assert len(qemu_processes_for(g["uuid"])) == 1
    assert inventory_host(settings, g["uuid"]) == dst
    assert ask(g["ip"], 9) == boot_id
    assert console_problems(g) == []
    # The guest's TCP stream, kept open through the freeze and the takeover, lost no line.
    assert stream.error is None, stream.error
    assert stream.in_order_without_loss and len(stream.received) == stream.sent > 100
    reservations = services_for(settings).reservations
    assert reservations.holders(src) == [] and reservations.holders(dst) == []
