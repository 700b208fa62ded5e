"""The ranges of the numbers an operator or a library caller supplies,
checked in the library (api) and offered to the CLI as click types
(livemig.cli.bounded), so that a mistyped or hostile value (0, a negative id,
1e400, nan) is one clear refusal that changes nothing, never a row the
scheduler divides by or an integer the database cannot hold."""
from __future__ import annotations

import math

from livemig.errors import InvalidInput

# Concurrent migrations (in plus out) of one host: beyond this a host would
# be migrating more guests than any link or QEMU can feed.
MIGRATIONS_PER_HOST = (1, 1024)
# Overcommit of vCPUs, memory or disk.
ALLOCATION_RATIO = (0.1, 1000.0)
# Rows one `migration list` returns.
LIST_LIMIT = (1, 1_000_000)
# A migration or operation id is the database's INTEGER primary key (32 bits
# on PostgreSQL).
MIGRATION_ID = (1, 2**31 - 1)
OPERATION_ID = MIGRATION_ID


def whole_number_in(what: str, value: object, bounds: tuple[int, int]) -> int:
    """`value` if it is an integer within `bounds`, else InvalidInput."""
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{what} must be a whole number from {low} to {high} (got {value!r})")
    return value


def finite_number_in(what: str, value: object, low: float, high: float | None = None) -> float:
    """`value` as a float if it is finite and within [low, high], else InvalidInput."""
    span = f"from {low:g} to {high:g}" if high is not None else f"of {low:g} or more"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or (high is not None and value > high):
        raise InvalidInput(f"{what} must be a finite number {span} (got {value!r})")
    return float(value)


def is_migration_id(value: int) -> bool:
    return MIGRATION_ID[0] <= value <= MIGRATION_ID[1]


def is_operation_id(value: int) -> bool:
    return OPERATION_ID[0] <= value <= OPERATION_ID[1]
