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
