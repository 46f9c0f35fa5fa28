"""expert persona dates: each expert keeps when its persona (system prompt or sampling) last
changed, so feedback on a query answered before then does not mark the new persona

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-12 12:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: a change made before this revision is undated (its earlier lessons are still
    # left out by stale_lessons; feedback given later on its older queries is not)
    with op.batch_alter_table('experts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('persona_changed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('experts', schema=None) as batch_op:
        batch_op.drop_column('persona_changed_at')
