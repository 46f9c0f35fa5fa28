"""query owners and replies: each accepted query names the running service that answers it,
and each service keeps a heartbeat, so replicas on one database recover only a dead one's
queries; a finished query keeps its final reply whole (a vote's is no generation's text)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('instances',
                    sa.Column('id', sa.String(length=32), nullable=False),
                    sa.Column('host', sa.String(length=255), nullable=False),
                    sa.Column('pid', sa.Integer(), nullable=False),
                    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('queries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('reply', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('queries', schema=None) as batch_op:
        batch_op.drop_column('reply')
        batch_op.drop_column('owner')
    op.drop_table('instances')
