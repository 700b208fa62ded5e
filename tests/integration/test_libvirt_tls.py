"""Issue 16, TLS for the migration stream between the lab's real libvirt
hosts (the lab's CA and per-host certificates, `lab up --tls`)."""
from __future__ import annotations

from livemig.lab.echo import ask
from tests.integration.labtools import active_on, cli, guest, other, where


def test_a_tls_migration_between_lab_hosts(lab, lab_settings):
    g = guest(lab)
    src = where(lab, lab_settings)
    dst = other(lab, src)
    boot_id = ask(g["ip"], 9)
    proc = cli(lab_settings, "migrate", "--live", "--tls", src, g["name"], dst)
    assert proc.returncode == 0, proc.stderr
    assert active_on(lab, g["uuid"]) == [dst]
    assert ask(g["ip"], 9) == boot_id
