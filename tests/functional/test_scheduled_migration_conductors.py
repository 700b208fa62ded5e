"""A migration whose destination livemig chose, run by real conductor
processes with ZooKeeper reservations: a failed attempt's destination is
released, only the current attempt's is held, and a conductor SIGKILLed in
the middle of the second attempt is taken over and finishes it there."""
from __future__ import annotations

import signal

import livemig
from tests.fakecloud import FakeCloud
from tests.functional.test_conductors import conductors, holders, wait_finished, zk_settings  # noqa: F401

CTX = livemig.admin_context("tests")


def test_conductor_killed_mid_second_attempt_holds_only_its_host_and_is_taken_over(tmp_path, zk_settings,
                                                                                     conductors):  # noqa: F811
    cloud = FakeCloud.build(tmp_path, zk_settings, migration_seconds=1.0)  # a, b, c; vm1 on a
    cloud.driver.inject_fault(cloud.uri("a"), "migrate", "dest-died")  # attempt 1 (b) fails, VM intact on a
    victim = conductors.start("victim", "migrate-domain", "during")  # dies in attempt 2's hypervisor job
    view = livemig.migrate(CTX, "vm1", wait=False, settings=zk_settings)
    assert view.dest_host == "b" and view.scheduled
    assert victim.wait(timeout=60) == -signal.SIGKILL
    # Dead in attempt 2: b was released by attempt 1's revert, a and c are held.
    current = livemig.show_migration(view.id, settings=zk_settings)
    assert current.dest_host == "c"
    assert [(a["host"], a["outcome"]) for a in current.attempts] == [("b", "failed"), ("c", "running")]
    assert holders(zk_settings, "b") == []
    assert holders(zk_settings, "a") != [] and holders(zk_settings, "c") != []
    conductors.start("rescuer")
    (done,) = wait_finished(zk_settings, [view.id])
    assert done.status == "completed", done.error_reason
    assert (done.dest_host, [(a["host"], a["outcome"]) for a in done.attempts]) == (
        "c", [("b", "failed"), ("c", "completed")])
    assert cloud.running_on() == ["c"] and cloud.instance().host == "c"
    assert cloud.vm not in cloud.domains_on("b")
    # The rescuer followed attempt 2's job instead of starting a third migration.
    assert cloud.driver.call_count(cloud.uri("a"), "migrate") == 2
    assert all(holders(zk_settings, host) == [] for host in ("a", "b", "c"))
