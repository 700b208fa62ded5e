"""Helper V's review of issue 14, on real ZooKeeper and conductors: a stale
operation runner's fenced flow (finding V3) does not stop a conductor from
running the operation to its end."""
from __future__ import annotations

import collections

import livemig
from livemig import api
from livemig.operations.claims import OperationFenced, operation_claimed
from livemig.operations.runner import claim_operation, load_operation_engine, run_operation_engine
from tests.drainfleet import CTX, Fleet
from tests.functional.test_conductors import Conductors, conductors, zk_settings  # noqa: F401 - fixtures
from tests.functional.test_drain_zookeeper import _wait_operations


def test_a_conductor_runs_an_operation_whose_flow_a_stale_runner_left_failed(tmp_path, zk_settings, conductors):
    fleet = Fleet.build(tmp_path, zk_settings, count=3, dests={"d1": {}, "d2": {}})
    view = livemig.drain_host(CTX, "src", wait=False, settings=zk_settings)  # posted; no conductor yet
    services = api._services(zk_settings)
    stale = claim_operation(services, view.id, "a runner about to freeze")
    claim_operation(services, view.id, "the runner that took over")  # ... then stopped before it wrote
    with operation_claimed(view.id, stale):
        engine = load_operation_engine(services, view.id)
        try:
            run_operation_engine(services, view.id, engine)
        except OperationFenced:
            pass
        else:
            raise AssertionError("the stale runner was not fenced")
    assert livemig.show_operation(view.id, settings=zk_settings).status == "planning"
    conductors.start("c1")
    (done,) = _wait_operations(zk_settings, [view.id])
    assert done.status == "completed", done.reason
    fleet.assert_invariants()
    assert collections.Counter(m.instance_uuid for m in fleet.migrations()) == collections.Counter(list(fleet.instances))
