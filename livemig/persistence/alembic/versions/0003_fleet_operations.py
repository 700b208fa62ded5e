"""fleet operations: scheduling, maintenance, operations and their moves

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('livemig_operation_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('operation_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('controller', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('livemig_operation_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_livemig_operation_events_operation_id'), ['operation_id'], unique=False)

    op.create_table('livemig_operation_moves',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('operation_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('instance_uuid', sa.String(length=36), nullable=False),
    sa.Column('instance_name', sa.String(length=255), nullable=False),
    sa.Column('source_host', sa.String(length=255), nullable=False),
    sa.Column('dest_host', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('migration_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('operation_id', 'instance_uuid')
    )
    with op.batch_alter_table('livemig_operation_moves', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_livemig_operation_moves_migration_id'), ['migration_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_livemig_operation_moves_operation_id'), ['operation_id'], unique=False)

    op.create_table('livemig_operations',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('requested_by', sa.String(length=255), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('arguments', sa.JSON(), nullable=False),
    sa.Column('plan', sa.JSON(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('logbook_id', sa.String(length=64), nullable=True),
    sa.Column('flow_id', sa.String(length=64), nullable=True),
    sa.Column('job_id', sa.String(length=64), nullable=True),
    sa.Column('claim_epoch', sa.Integer(), nullable=False),
    sa.Column('abort_requested', sa.Boolean(), nullable=False),
    sa.Column('abort_now', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('livemig_operations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_livemig_operations_host'), ['host'], unique=False)
        batch_op.create_index(batch_op.f('ix_livemig_operations_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_livemig_operations_status'), ['status'], unique=False)

    with op.batch_alter_table('livemig_hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('maintenance', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('maintenance_reason', sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column('maintenance_since', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('networks', sa.JSON(), nullable=False, server_default='[]'))

    with op.batch_alter_table('livemig_instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('group', sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f('ix_livemig_instances_group'), ['group'], unique=False)

    with op.batch_alter_table('livemig_migrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('operation_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('scheduled', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('attempts', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.create_index(batch_op.f('ix_livemig_migrations_operation_id'), ['operation_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('livemig_migrations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_livemig_migrations_operation_id'))
        batch_op.drop_column('attempts')
        batch_op.drop_column('scheduled')
        batch_op.drop_column('operation_id')

    with op.batch_alter_table('livemig_instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_livemig_instances_group'))
        batch_op.drop_column('group')

    with op.batch_alter_table('livemig_hosts', schema=None) as batch_op:
        batch_op.drop_column('networks')
        batch_op.drop_column('maintenance_since')
        batch_op.drop_column('maintenance_reason')
        batch_op.drop_column('maintenance')

    with op.batch_alter_table('livemig_operations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_livemig_operations_status'))
        batch_op.drop_index(batch_op.f('ix_livemig_operations_kind'))
        batch_op.drop_index(batch_op.f('ix_livemig_operations_host'))

    op.drop_table('livemig_operations')
    with op.batch_alter_table('livemig_operation_moves', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_livemig_operation_moves_operation_id'))
        batch_op.drop_index(batch_op.f('ix_livemig_operation_moves_migration_id'))

    op.drop_table('livemig_operation_moves')
    with op.batch_alter_table('livemig_operation_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_livemig_operation_events_operation_id'))

    op.drop_table('livemig_operation_events')
