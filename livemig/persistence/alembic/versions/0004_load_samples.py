"""load samples: what hosts and instances really use

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('livemig_load_samples',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('instance_uuid', sa.String(length=36), nullable=True),
    sa.Column('cpu', sa.Double(), nullable=False),
    sa.Column('host_cpus', sa.Integer(), nullable=False),
    sa.Column('memory_used_mb', sa.Double(), nullable=False),
    sa.Column('interval_s', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('livemig_load_samples', schema=None) as batch_op:
        batch_op.create_index('ix_livemig_load_samples_host_at', ['host', 'at'], unique=False)
        batch_op.create_index('ix_livemig_load_samples_instance_at', ['instance_uuid', 'at'], unique=False)
        batch_op.create_index(batch_op.f('ix_livemig_load_samples_at'), ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('livemig_load_samples', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_livemig_load_samples_at'))
        batch_op.drop_index('ix_livemig_load_samples_instance_at')
        batch_op.drop_index('ix_livemig_load_samples_host_at')

    op.drop_table('livemig_load_samples')
