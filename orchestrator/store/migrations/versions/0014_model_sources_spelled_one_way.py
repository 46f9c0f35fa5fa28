"""model sources spelled one way: a llamacpp or vLLM source is now read as one spelling
(`experts.types.one_spelling`: a package name trimmed, a path normalised), so a row stored under
another kept a `base_model_key` column no spec read back has: the checks that compare the two
(an n_ctx unlike a loaded model's, the models a removal unloads) missed it. Both are rewritten.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 06:30:00.000000
"""
import os
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

PACKAGE_PREFIX = 'package:'
SPELLED = ('llamacpp', 'vllm')


def upgrade() -> None:
    table = sa.table('experts', sa.column('id', sa.Integer), sa.column('spec', sa.JSON),
                     sa.column('base_model_key', sa.String))
    bind = op.get_bind()
    for row in bind.execute(sa.select(table.c.id, table.c.spec, table.c.base_model_key)).all():
        spec = _spelled(row.spec)
        key = _key(spec['base']) if isinstance(spec.get('base'), dict) else row.base_model_key
        if spec != row.spec or key != row.base_model_key:
            bind.execute(table.update().where(table.c.id == row.id).values(spec=spec, base_model_key=key))


def _spelled(spec: dict[str, Any]) -> dict[str, Any]:
    base = spec.get('base')
    if not isinstance(base, dict) or base.get('kind') not in SPELLED or not isinstance(base.get('source'), str):
        return spec
    return {**spec, 'base': {**base, 'source': _one_spelling(base['source'])}}


def _one_spelling(source: str) -> str:  # experts.types.one_spelling as of this revision
    if source.startswith(PACKAGE_PREFIX):
        return PACKAGE_PREFIX + source[len(PACKAGE_PREFIX):].strip()
    return os.path.normpath(source) if source.strip() else source


def _key(base: dict[str, Any]) -> str:
    return f"{base.get('kind')}:{base.get('source')}" + (f"#{base['model']}" if base.get('model') else '')


def downgrade() -> None:
    pass  # one spelling is a spelling every earlier revision reads
