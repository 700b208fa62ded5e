"""The fake hypervisor's locking: hosts are independent, as real daemons are,
except for a migration's two hosts, which are always taken together."""
from __future__ import annotations

import threading
import time

from livemig.drivers.base import MigrationOptions
from livemig.drivers.fake import FakeDriver, fake_uri


def _cloud(tmp_path, *names, migration_seconds=0.0):
    driver = FakeDriver()
    for name in names:
        driver.create_host(fake_uri(tmp_path, name), migration_seconds=migration_seconds)
    return driver, {name: fake_uri(tmp_path, name) for name in names}


def _blocked_while_held(driver, held_uri, op) -> bool:
    """Whether `op` (in another thread) waits while `held_uri`'s world is held."""
    done = threading.Event()
    with driver.world(held_uri):
        threading.Thread(target=lambda: (op(), done.set()), daemon=True).start()
        # Generous: on a loaded machine a free operation still ends well within it.
        blocked = not done.wait(2.0)
    assert done.wait(5), "the operation never finished"
    return blocked


def test_operations_on_other_hosts_do_not_wait(tmp_path):
    driver, uri = _cloud(tmp_path, "a", "b")
    assert not _blocked_while_held(driver, uri["a"], lambda: driver.host_facts(uri["b"]))
    assert _blocked_while_held(driver, uri["a"], lambda: driver.host_facts(uri["a"]))


def test_a_hosts_migration_partner_is_locked_with_it(tmp_path):
    driver, uri = _cloud(tmp_path, "a", "b", "c", migration_seconds=30.0)
    vm = driver.create_domain(uri["a"], "vm1")
    driver._start_migration(uri["a"], uri["b"], vm)
    # Looking at b (which has the incoming domain) takes a too, and the reverse.
    assert _blocked_while_held(driver, uri["a"], lambda: driver.find_domain(uri["b"], vm))
    assert _blocked_while_held(driver, uri["b"], lambda: driver.list_domains(uri["a"]))
    assert not _blocked_while_held(driver, uri["a"], lambda: driver.host_facts(uri["c"]))
    assert driver.abort_migration(uri["a"], vm)
    assert driver.find_domain(uri["b"], vm) is None and driver.find_domain(uri["a"], vm).running


def test_crossing_migrations_from_many_threads_all_complete(tmp_path):
    # a->b and b->a style pairs at once: locks are taken in one order, so no deadlock.
    names = [f"h{i}" for i in range(6)]
    driver, uri = _cloud(tmp_path, *names)
    vms = [(driver.create_domain(uri[src], f"vm-{src}"), src, dst)
           for src, dst in zip(names, names[1:] + names[:1])]
    options = MigrationOptions(poll_interval_s=0.01, timeout_s=30.0)
    errors: list[BaseException] = []

    def move(vm, src, dst):
        try:
            driver.migrate(uri[src], uri[dst], vm, options)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=move, args=args) for args in vms]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and time.monotonic() - started < 30
    for vm, _src, dst in vms:
        assert [name for name in names if driver.find_domain(uri[name], vm)] == [dst]
