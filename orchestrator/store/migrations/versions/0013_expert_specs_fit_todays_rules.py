"""expert specs fit today's rules: a spec stored under looser ones no longer validated, and one
such expert stopped every start (the API that could fix it never came up). A sampling seed past
0..2^31-1 (taken before that bound) is folded into it, as a chat's seed is; stop sequences that
are empty (llama.cpp answered "" to everything), over 256 characters or past the fourth are
dropped, the rule a query's `stop` follows.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-13 12:00:00.000000
"""
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

SEEDS = 2**31
MAX_STOPS, MAX_STOP_CHARS = 4, 256


def upgrade() -> None:
    table = sa.table('experts', sa.column('id', sa.Integer), sa.column('spec', sa.JSON))
    bind = op.get_bind()
    for row in bind.execute(sa.select(table.c.id, table.c.spec)).all():
        if (fitted := _fitted(row.spec)) != row.spec:
            bind.execute(table.update().where(table.c.id == row.id).values(spec=fitted))


def _fitted(spec: dict[str, Any]) -> dict[str, Any]:
    sampling = spec.get('sampling')
    if not isinstance(sampling, dict):
        return spec
    sampling = dict(sampling)
    if isinstance(seed := sampling.get('seed'), int) and not 0 <= seed < SEEDS:
        sampling['seed'] = seed % SEEDS
    if isinstance(stop := sampling.get('stop'), list):
        sampling['stop'] = [s for s in stop if isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS][:MAX_STOPS]
    return {**spec, 'sampling': sampling}


def downgrade() -> None:
    pass  # a fitted spec is valid under every earlier revision's rules too
