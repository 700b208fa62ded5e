"""Alembic environment for livemig's own tables.

TaskFlow's migrations use alembic's default version table, so ours keeps its
own (livemig_alembic_version) and both schemas live in one database."""
from __future__ import annotations

from alembic import context

from livemig.persistence.models import Base

VERSION_TABLE = "livemig_alembic_version"


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("livemig runs its migrations with a connection passed in")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
