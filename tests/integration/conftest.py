"""A real lab for the integration tests: two libvirt hosts with private state,
a bridge, an iSCSI volume with CHAP and a guest, all built here and removed
afterwards. Its names, ports and subnet differ from the default lab's, so an
operator's own `livemig lab` is left alone."""
from __future__ import annotations

import os

import pytest

from livemig.config import Settings
from livemig.lab.lab import Lab, LabConfig

TEST_LAB = LabConfig(name="lmtest", root="/var/lib/livemig-lab-test", bridge="lmtbr0", subnet="10.78.0",
                     port_base=16700, iscsi_port=13270, host_prefix="t")


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
