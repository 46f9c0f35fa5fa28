"""budgets: per-key default budgets, the budget part of a routing decision, and how a query
was asked (so a query recovered after a crash keeps its mode, seed and budget)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('default_latency_ms', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('default_energy_j', sa.Float(), nullable=True))

    with op.batch_alter_table('routing_decisions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('budget', sa.JSON(), nullable=True))

    with op.batch_alter_table('queries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('queries', schema=None) as batch_op:
        batch_op.drop_column('request')

    with op.batch_alter_table('routing_decisions', schema=None) as batch_op:
        batch_op.drop_column('budget')

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('default_energy_j')
        batch_op.drop_column('default_latency_ms')
