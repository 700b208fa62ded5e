"""Fleet operations on the real lab (issue 15): `lab3`'s three hosts and four
guests (two on the first host, one on each of the others), a TCP echo
stream kept open to every guest. A consolidation packs the guests onto
fewer hosts and puts the emptied ones in standby; where each guest runs is
read with virsh on every host, independently of livemig."""
from __future__ import annotations

import contextlib
import time

import livemig
from livemig.lab.echo import EchoStream
from tests.integration.labtools import assert_placed, console_problems, inventory, virsh_placement

CTX = livemig.admin_context("tests")


@contextlib.contextmanager
def echo_streams(guests):
    """An echo stream to every guest; on leaving, each has lost nothing."""
    with contextlib.ExitStack() as stack:
        streams = {g["name"]: stack.enter_context(EchoStream(g["ip"], 7, period_s=0.05)) for g in guests}
        time.sleep(0.5)
        yield streams
        for stream in streams.values():
            stream.settle()
    for name, stream in streams.items():
        assert stream.error is None, (name, stream.error)
        assert stream.in_order_without_loss and len(stream.received) == stream.sent > 50, name


def placement(lab) -> dict[str, str]:
    """Guest name -> the one host that runs it and defines it, by virsh."""
    running, defined = virsh_placement(lab)
    where = {}
    for g in lab.state()["guests"]:
        assert len(running.get(g["uuid"], [])) == 1, (g["name"], running.get(g["uuid"]))
        assert defined.get(g["uuid"]) == running[g["uuid"]], (g["name"], defined.get(g["uuid"]))
        where[g["name"]] = running[g["uuid"]][0]
    return where


def test_consolidation_packs_the_guests_onto_fewer_hosts_and_puts_the_emptied_ones_in_standby(
        lab3, lab3_settings, lab3_homes, lab3_hosts_restored):
    settings = lab3_settings
    began = time.monotonic()
    guests = lab3.state()["guests"]
    hosts = {lab3.host_name(i) for i in (1, 2, 3)}
    assert_placed(lab3, settings, lab3_homes)
    assert set(lab3_homes.values()) == hosts  # every host runs a guest
    with echo_streams(guests):
        # By allocation: no sample falls in a window that begins with this
        # test, so each guest counts as its vCPU (one core of a host's two)
        # and its memory. No headroom, so two guests fill a host.
        view = livemig.consolidate_fleet(CTX, headroom=0.0, window_s=time.monotonic() - began, settings=settings)
    assert view.status == "completed", (view.status, view.reason, view.events)
    assert view.plan["measured"] is False
    assert view.moves and all(m.status == "completed" for m in view.moves), view.moves

    after = placement(lab3)
    used = set(after.values())
    assert len(used) < len(hosts), after
    assert len(used) == 2  # four guests of one core each on hosts of two cores
    assert inventory(settings) == after
    moved = {name for name in after if after[name] != lab3_homes[name]}
    assert moved == {m.instance_name for m in view.moves}
    emptied = hosts - used
    assert sorted(view.plan["emptied"]) == sorted(emptied)
    state = {h.name: h for h in livemig.list_hosts(settings=settings)}
    assert {name for name in hosts if state[name].standby} == emptied
    assert all("consolidation" in state[name].standby_reason for name in emptied)
    # A host in standby takes no placements until it is woken.
    for name in emptied:
        selection = livemig.choose_destination(guests[0]["name"], to=name, settings=settings)
        assert selection.chosen is None and "standby" in selection.why_none(), selection.why_none()
    for g in guests:
        assert console_problems(g) == []

    for name in emptied:
        assert not livemig.wake_host(CTX, name, settings=settings).standby
    assert not any(h.standby for h in livemig.list_hosts(settings=settings))
