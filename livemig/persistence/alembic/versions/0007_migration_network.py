"""migration network: a host's migration address and its certificate's name

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('livemig_hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('migration_address', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('migration_tls_name', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('livemig_hosts', schema=None) as batch_op:
        batch_op.drop_column('migration_tls_name')
        batch_op.drop_column('migration_address')
