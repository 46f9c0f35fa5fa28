"""lessons: what the router learned from traffic (competitions, explorations, feedback)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 17:30:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'lessons',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('query_id', sa.Integer(), nullable=True),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('embedding', sa.LargeBinary(), nullable=False),
        sa.Column('skills', sa.JSON(), nullable=False),
        sa.Column('marks', sa.JSON(), nullable=False),
        sa.Column('choices', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['query_id'], ['queries.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('query_id', 'source'),
    )
    with op.batch_alter_table('lessons', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lessons_source'), ['source'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('lessons', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lessons_source'))
    op.drop_table('lessons')
