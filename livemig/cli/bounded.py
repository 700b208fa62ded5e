"""Click types for the bounded numbers of livemig.input_bounds: a value out
of range is a usage error, one line on stderr, exit 2, before anything runs."""
from __future__ import annotations

import math

import click

from livemig import input_bounds


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange also refusing nan and infinities (which compare false
    with every bound, so FloatRange lets nan through)."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class RowId(click.ParamType):
    """A migration's or an operation's id: a whole number from 1 to the
    database's largest id (a larger one made SQLite raise OverflowError)."""

    def __init__(self, noun: str, bounds: tuple[int, int]):
        self.noun, self.bounds = noun, bounds
        self.name = f"{noun} id"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip(), 10)
            except ValueError:
                self.fail(f"{value!r} is not {self._a_noun_id()} (a whole number)", param, ctx)
        low, high = self.bounds
        if not low <= number <= high:
            self.fail(f"{value!r} is not {self._a_noun_id()} (ids run from {low} to {high})", param, ctx)
        return number

    def _a_noun_id(self) -> str:
        return f"{'an' if self.noun[0] in 'aeiou' else 'a'} {self.noun} id"


MIGRATION_ID = RowId("migration", input_bounds.MIGRATION_ID)
OPERATION_ID = RowId("operation", input_bounds.OPERATION_ID)
MIGRATIONS_PER_HOST = click.IntRange(*input_bounds.MIGRATIONS_PER_HOST)
ALLOCATION_RATIO = FiniteFloatRange(*input_bounds.ALLOCATION_RATIO)
LIST_LIMIT = click.IntRange(*input_bounds.LIST_LIMIT)
SECONDS = FiniteFloatRange(min=0)
