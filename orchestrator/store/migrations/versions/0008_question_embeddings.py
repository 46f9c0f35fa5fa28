"""question embeddings: each validation question's embedding is stored beside it, so a start
(a restart, a new Serve replica) reads the router's memory instead of embedding it again

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 20:10:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('validation_questions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('embedding', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('validation_questions', schema=None) as batch_op:
        batch_op.drop_column('embedding')
