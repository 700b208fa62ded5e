"""standby hosts and planned waves: consolidation and rebalance operations

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# 0003's unique (operation_id, instance_uuid) had no name: each dialect named
# it. SQLite's batch mode re-creates the table, and this naming convention
# names the reflected constraint so that it can be dropped.
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
_OLD_UNIQUE = {"sqlite": "uq_livemig_operation_moves_operation_id",
               "postgresql": "livemig_operation_moves_operation_id_instance_uuid_key"}


def upgrade() -> None:
    with op.batch_alter_table('livemig_hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('standby', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('standby_reason', sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column('standby_since', sa.DateTime(), nullable=True))

    dialect = op.get_bind().dialect.name
    # A plan's stop-over moves one instance twice: moves are unique by position.
    with op.batch_alter_table('livemig_operation_moves', schema=None,
                              naming_convention=_SQLITE_NAMES if dialect == 'sqlite' else None) as batch_op:
        batch_op.add_column(sa.Column('wave', sa.Integer(), nullable=True))
        batch_op.drop_constraint(_OLD_UNIQUE.get(dialect, _OLD_UNIQUE['postgresql']), type_='unique')
        batch_op.create_unique_constraint('uq_livemig_operation_moves_position', ['operation_id', 'position'])


def downgrade() -> None:
    with op.batch_alter_table('livemig_operation_moves', schema=None) as batch_op:
        batch_op.drop_constraint('uq_livemig_operation_moves_position', type_='unique')
        batch_op.create_unique_constraint('uq_livemig_operation_moves_instance', ['operation_id', 'instance_uuid'])
        batch_op.drop_column('wave')

    with op.batch_alter_table('livemig_hosts', schema=None) as batch_op:
        batch_op.drop_column('standby_since')
        batch_op.drop_column('standby_reason')
        batch_op.drop_column('standby')
