"""safety: fencing epochs, per-migration options, shared paths, leftovers,
owned host resources, credentials

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('livemig_hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shared_paths', sa.JSON(), nullable=False, server_default='[]'))
    with op.batch_alter_table('livemig_migrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claim_epoch', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('options', sa.JSON(), nullable=False, server_default='{}'))
    op.create_table('livemig_leftovers',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('migration_id', sa.Integer(), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('resolved_at', sa.DateTime(), nullable=True),
    sa.Column('resolution', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('livemig_leftovers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_livemig_leftovers_migration_id'), ['migration_id'], unique=False)
    op.create_table('livemig_host_resources',
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('migration_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('host', 'kind', 'name')
    )
    op.create_table('livemig_credentials',
    sa.Column('usage', sa.String(length=255), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('usage')
    )


def downgrade() -> None:
    op.drop_table('livemig_credentials')
    op.drop_table('livemig_host_resources')
    with op.batch_alter_table('livemig_leftovers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_livemig_leftovers_migration_id'))
    op.drop_table('livemig_leftovers')
    with op.batch_alter_table('livemig_migrations', schema=None) as batch_op:
        batch_op.drop_column('options')
        batch_op.drop_column('claim_epoch')
    with op.batch_alter_table('livemig_hosts', schema=None) as batch_op:
        batch_op.drop_column('shared_paths')
