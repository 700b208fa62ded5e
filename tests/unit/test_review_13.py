"""Helper V's adversarial review of issue 13 (safety): each test reproduces
one way the promise broke (hostile input, a stale claim, a revert that could
not finish) and asserts the state of the world after the fix."""
from __future__ import annotations

import pytest

import livemig
from livemig.errors import InvalidInput
from livemig.operations.claims import OperationNotFound
from livemig.operations import api as operations
from tests.unit.test_cli import run, snapshot

# An id no database column holds: SQLite raised OverflowError (a traceback,
# exit 1) for it instead of "operation N does not exist".
HUGE = "99999999999999999999"

OPERATION_BAD_INPUT = [
    ("show a huge id", ["operation", "show", HUGE], f"'{HUGE}' is not an operation id"),
    ("abort a huge id", ["operation", "abort", HUGE], f"'{HUGE}' is not an operation id"),
    ("resume a huge id", ["operation", "resume", HUGE], f"'{HUGE}' is not an operation id"),
    ("show a zero id", ["operation", "show", "0"], "'0' is not an operation id"),
    ("list a huge limit", ["operation", "list", "--limit", HUGE], "is not in the range 1<=x<=1000000"),
]


@pytest.mark.parametrize("case,args,message", OPERATION_BAD_INPUT, ids=[c[0] for c in OPERATION_BAD_INPUT])
def test_operation_commands_refuse_ids_no_database_holds_in_one_line(cloud, case, args, message):
    before = snapshot(cloud.settings)
    proc = run(cloud.settings, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("livemig: error: ") and message in lines[0], proc.stderr
    assert snapshot(cloud.settings) == before


def test_the_operations_library_calls_answer_a_huge_id_as_not_found(cloud):
    ctx = livemig.admin_context("tests")
    for call in (lambda: operations.show_operation(2**70, settings=cloud.settings),
                 lambda: operations.abort_operation(ctx, 2**70, settings=cloud.settings),
                 lambda: operations.resume_operation(ctx, 2**70, settings=cloud.settings)):
        with pytest.raises(OperationNotFound, match=f"operation {2**70} does not exist"):
            call()
    with pytest.raises(InvalidInput, match="the limit must be a whole number from 1 to 1000000"):
        operations.list_operations(limit=2**70, settings=cloud.settings)


# -- a stale controller in the source cleanup ----------------------------------------------------------
#
# CleanUpSource looked at the source, then destroyed or undefined with no
# check of its claim: a controller frozen between the look and the act (past
# its session timeout, while another claimed the migration, finished it and
# the world moved on) destroyed what it had seen when it woke.

def _moved_to_b(cloud):
    import threading

    from livemig.runner import claim_migration
    from livemig.services import services_for
    from livemig.tasks.cleanup import UpdateInstanceHost
    from livemig.tasks.migrate import MigrateDomain
    from tests.unit.test_tasks import _prepare_destination

    view = livemig.create_migration(livemig.admin_context("tests"), "vm1", "a", "b", settings=cloud.settings)
    mig = {"migration_id": view.id, "instance_uuid": cloud.vm, "source_host": "a", "dest_host": "b"}
    services = services_for(cloud.settings)
    stale = claim_migration(services, view.id)
    _prepare_destination(cloud, mig)
    MigrateDomain(services, name="migrate-domain").execute(**mig)
    UpdateInstanceHost(services, name="update-instance-host").execute(view.id, cloud.vm, "b")
    assert cloud.running_on() == ["b"]

    def another_controller_claims() -> None:
        # In its own thread: this one runs under the stale claim.
        claimer = threading.Thread(target=claim_migration, args=(services, view.id))
        claimer.start()
        claimer.join()

    return services, mig, stale, another_controller_claims


def test_a_stale_cleanup_does_not_destroy_the_vm_that_came_back_to_its_source(cloud, monkeypatch):
    from livemig import fencing
    from livemig.drivers.fake import FakeDriver
    from livemig.tasks.cleanup import CleanUpSource

    services, mig, stale, another_controller_claims = _moved_to_b(cloud)
    # A leftover definition on the source: the cleanup destroys it...
    cloud.driver.create_domain(cloud.uri("a"), "vm1", uuid=cloud.vm, state="shutoff")
    real_find = FakeDriver.find_domain
    frozen = []

    def frozen_after_looking(self, uri, uuid):
        found = real_find(self, uri, uuid)
        if uri == cloud.uri("a") and not frozen:
            frozen.append(True)
            # ...but while this controller is frozen another claims the
            # migration, and the VM is started again on a (an operator, or a
            # later migration back): the definition it saw is the running VM now.
            another_controller_claims()
            cloud.driver.destroy_domain(cloud.uri("b"), cloud.vm)
            cloud.driver.destroy_domain(cloud.uri("a"), cloud.vm)
            cloud.driver.create_domain(cloud.uri("a"), "vm1", uuid=cloud.vm)
        return found

    monkeypatch.setattr(FakeDriver, "find_domain", frozen_after_looking)
    with fencing.claimed(mig["migration_id"], stale), pytest.raises(fencing.Fenced):
        CleanUpSource(services, name="clean-up-source").execute(**mig)
    assert frozen
    assert cloud.running_on() == ["a"], "the stale controller destroyed the running VM"


def test_a_stale_cleanup_does_not_undefine_a_secret_a_vm_there_uses_now(cloud, monkeypatch):
    from livemig import fencing
    from livemig.drivers.base import DiskInfo
    from livemig.host_resources import record_created
    from livemig.tasks import cleanup

    services, mig, stale, another_controller_claims = _moved_to_b(cloud)
    record_created(services.db, "a", "secret", "vol-1", mig["migration_id"])  # livemig's own, to remove
    real_needed = cleanup.needed_by_other_migration

    def frozen_after_deciding(session, host, kind, name, migration_id):
        needed = real_needed(session, host, kind, name, migration_id)
        if kind == "secret" and needed is None:
            # Frozen here: another controller claims the migration, and a VM
            # that uses the volume's secret starts on a.
            another_controller_claims()
            cloud.driver.create_domain(cloud.uri("a"), "other", disks=[DiskInfo(
                target="vdb", kind="network", source="iscsi://127.0.0.1:3260/iqn.lab:vol/1", protocol="iscsi",
                hosts=[["127.0.0.1", 3260]], secret_usage="vol-1", secret_type="iscsi")])
        return needed

    monkeypatch.setattr(cleanup, "needed_by_other_migration", frozen_after_deciding)
    with fencing.claimed(mig["migration_id"], stale), pytest.raises(fencing.Fenced):
        cleanup.CleanUpSource(services, name="clean-up-source").execute(**mig)
    assert "vol-1" in cloud.host_record("a")["secrets"], "the stale controller removed a secret a VM uses"


# -- host names ----------------------------------------------------------------------------------------
#
# A host name is a column of most tables, a ZooKeeper path component
# (reservations: ROOT/hosts/NAME/MIGRATION) and a word in every log line and
# table. Only "", "/" and more than 255 characters were refused: ".." (no
# ZooKeeper path may hold it), a blank name and a name with a newline (a
# forged log line or table row) were registered.

BAD_HOST_NAMES = ["..", ".", " ", "x\nlivemig: migration 7 completed", "tab\there", "a b", "é\u202e"]


@pytest.mark.parametrize("name", BAD_HOST_NAMES, ids=[repr(n) for n in BAD_HOST_NAMES])
def test_host_add_refuses_a_name_that_is_no_host_name(cloud, name):
    before = snapshot(cloud.settings)
    cloud.driver.create_host(cloud.uri("d"))
    proc = run(cloud.settings, "host", "add", name, "--uri", cloud.uri("d"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("livemig: error: invalid host name "), proc.stderr
    assert snapshot(cloud.settings) == before


def test_ordinary_host_names_are_still_accepted(cloud):
    for name in ("hv-01.example.org", "rack2_node7", "D"):
        cloud.driver.create_host(cloud.uri(name))
        assert livemig.add_host(livemig.admin_context("tests"), name, cloud.uri(name),
                                settings=cloud.settings).name == name
