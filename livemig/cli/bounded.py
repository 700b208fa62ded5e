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


class MigrationId(click.ParamType):
    """A migration id: a whole number from 1 to the database's largest id."""

    name = "migration id"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip(), 10)
            except ValueError:
                self.fail(f"{value!r} is not a migration id (a whole number)", param, ctx)
        if not input_bounds.is_migration_id(number):
            low, high = input_bounds.MIGRATION_ID
            self.fail(f"{value!r} is not a migration id (ids run from {low} to {high})", param, ctx)
        return number


MIGRATION_ID = MigrationId()
MIGRATIONS_PER_HOST = click.IntRange(*input_bounds.MIGRATIONS_PER_HOST)
ALLOCATION_RATIO = FiniteFloatRange(*input_bounds.ALLOCATION_RATIO)
LIST_LIMIT = click.IntRange(*input_bounds.LIST_LIMIT)
SECONDS = FiniteFloatRange(min=0)
