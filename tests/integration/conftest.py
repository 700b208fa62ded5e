"""Real labs for the integration tests, each built once per session and
removed afterwards: `lab`, two libvirt hosts with private state, a bridge,
an iSCSI volume with CHAP and a guest; `lab3`, three hosts and four guests
for the fleet operations (drain, consolidate, rebalance). Their names, ports
and subnets differ from each other's and from the default lab's, so both
may be up at once and an operator's own `livemig lab` is left alone."""
from __future__ import annotations

import os

import pytest

import livemig
from livemig.config import Settings
from livemig.lab.lab import Lab, LabConfig

TEST_LAB = LabConfig(name="lmtest", root="/var/lib/livemig-lab-test", bridge="lmtbr0", subnet="10.78.0",
                     port_base=16700, iscsi_port=13270, host_prefix="t")
THREE_HOST_LAB = LabConfig(name="lmdrain", root="/var/lib/livemig-lab-drain", bridge="lmtbr2", subnet="10.81.0",
                           port_base=17000, iscsi_port=13300, host_prefix="d")
# Guest number -> the host it lives on in `lab3`: two on the first host (a
# drain has two guests to spread, a rebalance two busy guests to split),
# one on each of the others (a consolidation has every host to empty).
LAB3_HOMES = {1: 1, 2: 1, 3: 2, 4: 3}


@pytest.fixture(scope="session")
def lab_settings(tmp_path_factory) -> Settings:
    return Settings(data_dir=str(tmp_path_factory.mktemp("labdata")), domain_type="qemu", poll_interval_s=0.1)


@pytest.fixture(scope="session")
def lab(lab_settings):
    if os.geteuid() != 0:
        pytest.fail("the libvirt integration tests need root (they build a lab)")
    lab = Lab(TEST_LAB, say=print)
    lab.up(hosts=2, guests=1, settings=lab_settings, tls=True)
    try:
        yield lab
    finally:
        lab.down(settings=lab_settings)


@pytest.fixture(scope="session")
def lab3_settings(tmp_path_factory) -> Settings:
    # The whole allowed downtime from the start, so QEMU switches over after
    # its first pass: a TCG guest can come up corrupted after a migration of
    # many iterations (NOTES.md), and a busy machine makes iterations many.
    # (Commands run with the CLI get it as LIVEMIG_DOWNTIME_STEPS=1.)
    return Settings(data_dir=str(tmp_path_factory.mktemp("lab3data")), domain_type="qemu",
                    poll_interval_s=0.1, downtime_steps=1)


@pytest.fixture(scope="session")
def lab3(lab3_settings):
    if os.geteuid() != 0:
        pytest.fail("the libvirt integration tests need root (they build a lab)")
    lab = Lab(THREE_HOST_LAB, say=print)
    try:
        state = lab.up(hosts=3, guests=0, settings=lab3_settings)
        for g, host_index in LAB3_HOMES.items():
            lab.add_guest(state, g, host_index=host_index)
        livemig.sync_hosts(livemig.admin_context("tests"), settings=lab3_settings)
        yield lab
    finally:
        lab.down(settings=lab3_settings)
        livemig.close()


@pytest.fixture(scope="session")
def lab3_homes(lab3) -> dict[str, str]:
    return {f"vm{g}": lab3.host_name(i) for g, i in LAB3_HOMES.items()}


@pytest.fixture
def lab3_hosts_restored(lab3, lab3_settings):
    """After the test: every lab3 host back in service (out of maintenance
    and standby), whatever the test left, so the next test's guests can go
    home and its plans see three hosts."""
    yield
    ctx = livemig.admin_context("tests")
    for host in livemig.list_hosts(settings=lab3_settings):
        if host.standby:
            livemig.wake_host(ctx, host.name, settings=lab3_settings)
        if host.maintenance:
            livemig.undrain_host(ctx, host.name, settings=lab3_settings)


# Fixtures that hand a test a lab whose guests the health check watches: the
# lab's fixture, its settings' and the one naming each guest's home host (None:
# every guest lives on the first host).
LAB_FIXTURES = {"lab": ("lab_settings", None), "lab3": ("lab3_settings", "lab3_homes")}


@pytest.fixture(autouse=True)
def lab_guests_stay_healthy(request):
    """Before a lab test: every guest runs on its home host (a guest an
    earlier test left paused is resumed, one it moved is moved back) and the
    inventory is synced with the hosts. After it:
    every guest still answers with the boot id it had (no reboot), and its
    console got no Oops/panic/BUG during the test: a test that passed while
    its guest crashed proves nothing."""
    names = [n for n in LAB_FIXTURES if n in request.fixturenames]
    if not names:
        yield
        return
    from tests.integration.labtools import guests_health, guests_restored, health_problems

    settings_fixture, homes_fixture = LAB_FIXTURES[names[0]]
    lab, settings = request.getfixturevalue(names[0]), request.getfixturevalue(settings_fixture)
    guests_restored(lab, settings, request.getfixturevalue(homes_fixture) if homes_fixture else None)
    before = guests_health(lab)
    yield
    problems = health_problems(lab, before)
    assert problems == [], problems
