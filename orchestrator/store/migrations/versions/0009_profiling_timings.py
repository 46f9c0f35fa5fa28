"""profiling timings: each graded validation answer keeps what its reply took (tokens in and
out, wall time), so a restart costs each local model by its own profiling runs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 12:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('validation_answers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prompt_tokens', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('completion_tokens', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('latency_s', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('validation_answers', schema=None) as batch_op:
        batch_op.drop_column('latency_s')
        batch_op.drop_column('completion_tokens')
        batch_op.drop_column('prompt_tokens')
