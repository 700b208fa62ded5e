"""migration policies: a migration's policy, force-complete, phase; instance labels

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('livemig_migrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('policy', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('force_complete_requested', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('phase', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('throttle_pct', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('postcopy_requests', sa.BigInteger(), nullable=True))

    with op.batch_alter_table('livemig_instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('labels', sa.JSON(), nullable=False, server_default='{}'))


def downgrade() -> None:
    with op.batch_alter_table('livemig_instances', schema=None) as batch_op:
        batch_op.drop_column('labels')

    with op.batch_alter_table('livemig_migrations', schema=None) as batch_op:
        batch_op.drop_column('postcopy_requests')
        batch_op.drop_column('throttle_pct')
        batch_op.drop_column('phase')
        batch_op.drop_column('force_complete_requested')
        batch_op.drop_column('policy')
