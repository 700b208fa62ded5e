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
    lab.up(hosts=2, guests=1, settings=lab_settings)
    try:
        yield lab
    finally:
        lab.down(settings=lab_settings)
