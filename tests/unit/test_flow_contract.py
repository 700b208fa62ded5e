"""The flow's contract: what it requires, what its atoms are called, and that
a conductor can rebuild it by name from JSON-able arguments."""
from __future__ import annotations

import json

from taskflow.engines.helpers import _fetch_validate_factory
from taskflow.flow import Flow

from livemig.config import Settings
from livemig.flows import keys
from livemig.flows.live_migration import FACTORY_NAME, REQUIRED_STORE_KEYS, get_live_migration_flow

EXPECTED_STEPS = [
    "rollback-or-terminate", "retry-on-next-destination", "choose-destination", "reserve-hosts",
    "mark-migration-preparing", "check-migration-prerequisites", "mark-instance-migrating",
    "set-up-volumes-on-destination", "set-up-network-on-destination", "create-disk-images-on-destination",
    "migrate-domain", "update-instance-host", "clean-up-source", "finish-storage-copy", "release-hosts",
    "mark-migration-completed",
]
# The atoms a failed attempt reverts and its retry controller runs again;
# everything after them happens past switchover and is never retried.
RETRIED_STEPS = EXPECTED_STEPS[2:11]


def _atoms(flow):
    """Every atom in execution order, a subflow's retry controller first."""
    for item in flow:
        if isinstance(item, Flow):
            if item.retry is not None:
                yield item.retry
            yield from _atoms(item)
        else:
            yield item


def _flow(tmp_path, options=None):
    from livemig.services import building_flows_with, services_for

    with building_flows_with(services_for(Settings(data_dir=str(tmp_path)))):
        return get_live_migration_flow(options)


def test_flow_requires_exactly_the_store_keys(tmp_path):
    flow = _flow(tmp_path)
    assert set(flow.requires) == set(REQUIRED_STORE_KEYS) == {
        keys.MIGRATION_ID, keys.INSTANCE_UUID, keys.SOURCE_HOST, keys.DEST_HOST}


def test_every_task_argument_is_provided_by_store_or_an_earlier_task(tmp_path):
    available = set(REQUIRED_STORE_KEYS)
    for atom in _atoms(_flow(tmp_path)):
        missing = set(atom.requires) - available
        assert not missing, f"{atom.name} needs {missing}"
        available |= set(atom.provides)


def test_atom_names_are_unique_stable_and_in_order(tmp_path):
    names = [atom.name for atom in _atoms(_flow(tmp_path))]
    assert names == EXPECTED_STEPS


def test_only_the_destination_dependent_steps_are_under_the_retry_controller(tmp_path):
    subflows = [item for item in _flow(tmp_path) if isinstance(item, Flow)]
    assert len(subflows) == 1
    assert subflows[0].retry.name == "retry-on-next-destination"
    assert [atom.name for atom in subflows[0]] == RETRIED_STEPS
    # Every step that works on a destination takes the attempt's, not the requested one.
    for atom in _atoms(_flow(tmp_path)):
        if "dest_host" in atom.rebind and atom.name != "choose-destination":  # it reads the requested one
            assert atom.rebind["dest_host"] == keys.ATTEMPT_DEST_HOST, atom.name


def test_factory_importable_by_name_with_json_arguments(tmp_path):
    options = {"max_downtime_ms": 100, "queue_timeout_s": 0.0}
    name, factory = _fetch_validate_factory(FACTORY_NAME)
    assert factory is get_live_migration_flow
    assert json.loads(json.dumps(options)) == options
    assert [a.name for a in _atoms(_flow(tmp_path, options))] == EXPECTED_STEPS


def test_rollback_task_is_first_so_its_revert_runs_last(tmp_path):
    first = next(iter(_flow(tmp_path)))
    assert first.name == "rollback-or-terminate"
    # Its revert needs only what the caller stored, never a later task's result.
    assert set(first.requires) <= REQUIRED_STORE_KEYS
