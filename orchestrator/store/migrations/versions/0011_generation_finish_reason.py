"""generation finish reasons: each generation keeps why its backend ended it (stop | length), so a
chat reply reports the backend's own finish_reason rather than guessing from its token count

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-10 12:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: rows from before are unknown, and a chat reply then guesses as it did
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('finish_reason', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.drop_column('finish_reason')
