"""decision record: a routing decision is stored as one JSON record (domain.Decision), so the
store, every reply and the dashboard read one shape; the old per-field columns are folded in

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00.000000
"""
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

OLD = {'router': sa.String, 'mode': sa.String, 'seed': sa.Integer, 'skills': sa.JSON, 'experts': sa.JSON,
       'recruited': sa.JSON, 'aggregator': sa.String, 'budget': sa.JSON}


def _table() -> sa.TableClause:
    return sa.table('routing_decisions', sa.column('id', sa.Integer), sa.column('record', sa.JSON),
                    *(sa.column(name, kind) for name, kind in OLD.items()))


def _record(row: Any) -> dict[str, Any]:
    """The record an old row held field by field (each scored expert gets its draw count)."""
    picks = list(row.recruited or [])
    experts = [{**e, 'recruited': picks.count(e['name'])} for e in row.experts or []]
    return {'router': row.router, 'mode': row.mode, 'seed': row.seed or 0, 'skills': list(row.skills or []),
            'experts': experts, 'recruited': picks, 'aggregator': row.aggregator, 'budget': row.budget}


def upgrade() -> None:
    with op.batch_alter_table('routing_decisions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('record', sa.JSON(), nullable=True))
    table = _table()
    bind = op.get_bind()
    for row in bind.execute(sa.select(table)).all():
        bind.execute(table.update().where(table.c.id == row.id).values(record=_record(row)))
    with op.batch_alter_table('routing_decisions', schema=None) as batch_op:
        batch_op.alter_column('record', existing_type=sa.JSON(), nullable=False)
        for column in OLD:
            batch_op.drop_column(column)


def downgrade() -> None:
    with op.batch_alter_table('routing_decisions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('router', sa.String(length=32), nullable=False, server_default='symbolic'))
        batch_op.add_column(sa.Column('mode', sa.String(length=16), nullable=False, server_default='topk'))
        batch_op.add_column(sa.Column('seed', sa.Integer(), nullable=True))
        for column in ('skills', 'experts', 'recruited'):
            batch_op.add_column(sa.Column(column, sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('aggregator', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('budget', sa.JSON(), nullable=True))
    table = _table()
    bind = op.get_bind()
    for row in bind.execute(sa.select(table.c.id, table.c.record)).all():
        r = row.record
        bind.execute(table.update().where(table.c.id == row.id).values(
            **{c: r.get(c) for c in OLD if c != 'experts'},
            experts=[{k: v for k, v in e.items() if k != 'recruited'} for e in r.get('experts', [])]))
    with op.batch_alter_table('routing_decisions', schema=None) as batch_op:
        batch_op.drop_column('record')
