"""Deferred modules: loaded once, on first use, safely from many threads."""
from __future__ import annotations

import sys
import threading

import pytest

from livemig import lazy

SLOW_MODULE = """
import time
LOADS = globals().get("LOADS", 0) + 1
time.sleep(0.3)  # a wide window for a second thread to see a half-run module
VALUE = 42
"""


@pytest.fixture
def slow_module(tmp_path, monkeypatch):
    name = f"livemig_test_slow_{id(tmp_path)}"
    (tmp_path / f"{name}.py").write_text(SLOW_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_deferred_module_loads_on_first_attribute(slow_module):
    lazy.defer(slow_module)
    stand_in = sys.modules[slow_module]
    assert "VALUE" not in vars(stand_in)  # not run yet
    assert stand_in.VALUE == 42
    real = sys.modules[slow_module]
    assert real is not stand_in and real.VALUE == 42 and real.LOADS == 1


def test_threads_racing_for_a_deferred_module_all_see_it_whole(slow_module):
    lazy.defer(slow_module)
    stand_in = sys.modules[slow_module]
    seen, errors = [], []
    start = threading.Barrier(8)

    def use() -> None:
        start.wait()
        try:
            seen.append(stand_in.VALUE)
        except Exception as exc:  # what importlib's LazyLoader gives on 3.11
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and seen == [42] * 8
    assert sys.modules[slow_module].LOADS == 1


def test_load_all_leaves_no_stand_in(slow_module):
    lazy.defer(slow_module)
    lazy.load_all()
    assert type(sys.modules[slow_module]).__name__ == "module"
    assert sys.modules[slow_module].VALUE == 42
