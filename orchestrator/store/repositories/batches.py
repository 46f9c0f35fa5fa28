"""Batches: which stored queries were submitted together, in order."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session, selectinload

from orchestrator.store.models import Batch, BatchItem, Query


class BatchRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, items: Sequence[tuple[int, str | None]], key_id: int | None = None) -> Batch:
        """`items` are (query id, custom id) in submission order."""
        row = Batch(key_id=key_id, items=[BatchItem(position=i, query_id=q, custom_id=c)
                                          for i, (q, c) in enumerate(items)])
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, batch_id: int) -> Batch | None:
        """The batch with its items, their queries and the queries' decisions, in one go."""
        opts = [selectinload(Batch.items).selectinload(BatchItem.query).selectinload(Query.decision)]
        return self.session.get(Batch, batch_id, options=opts)
