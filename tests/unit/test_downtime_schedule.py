"""The allowed-downtime schedule handed to the hypervisor driver."""
from __future__ import annotations

import pytest

from livemig.config import Settings
from livemig.drivers.base import MigrationOptions, downtime_schedule
from livemig.errors import InvalidInput


def test_rises_from_a_step_to_the_maximum():
    steps = downtime_schedule(300, 10, 9.375)
    assert steps[0] == (0.0, 30) and steps[-1] == (93.75, 300)
    assert len(steps) == 11
    times = [t for t, _ in steps]
    values = [v for _, v in steps]
    assert times == sorted(times) and values == sorted(values)
    assert all(b - a == pytest.approx(27, abs=1) for a, b in zip(values, values[1:]))


def test_one_step_is_the_maximum_at_once():
    assert downtime_schedule(500, 1, 75.0) == [(0.0, 500)]
    assert MigrationOptions(max_downtime_ms=500).initial_downtime_ms() == 500
    assert MigrationOptions(downtime_schedule=downtime_schedule(400, 4, 1)).initial_downtime_ms() == 100


@pytest.mark.parametrize("bad", [{"downtime_steps": 0}, {"max_downtime_ms": 0},
                                 {"downtime_step_delay_s_per_gib": -1.0}])
def test_settings_refuse_a_schedule_that_cannot_work(tmp_path, bad):
    with pytest.raises(InvalidInput):
        Settings(data_dir=str(tmp_path), **bad)
