"""Batches: many queries accepted at once and answered in the background.

They are admitted like any query (checked, routed, stored with the batch in one transaction, so
a crash loses none: the next start's `QueryService.recover` answers what is left, and a batch
interrupted by a crash completes), then fed to the same batching window as live traffic, in
window-sized chunks so live queries can share the device between them. A batch's status is
read from its queries, never kept apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from orchestrator.domain import Ask
from orchestrator.services.backlog import key_of
from orchestrator.services.errors import NotFound
from orchestrator.services.idempotency import Claim
from orchestrator.services.queries import QueryService
from orchestrator.store.db import Database
from orchestrator.store.models import Batch
from orchestrator.store.repositories.batches import BatchRepository


@dataclass(frozen=True)
class BatchEntry:
    ask: Ask
    custom_id: str | None = None


@dataclass(frozen=True)
class BatchCounts:
    total: int
    completed: int
    failed: int

    @property
    def status(self) -> Literal["in_progress", "completed"]:
        return "completed" if self.completed + self.failed == self.total else "in_progress"


def counts(batch: Batch) -> BatchCounts:
    states = [item.query.status for item in batch.items]
    return BatchCounts(len(states), states.count("done"), states.count("failed"))


class BatchService:
    def __init__(self, db: Database, queries: QueryService):
        self.db, self.queries = db, queries

    def submit(self, entries: Sequence[BatchEntry], key_id: int | None = None, claim: Claim | None = None) -> int:
        """Admit the batch and queue its queries; returns the batch id at once. A query that
        cannot be taken refuses the whole batch with its 4xx, and nothing is stored. A `claim`
        (idempotency key) is stored with the batch; KeyTaken, nothing stored, if it was taken."""
        asks, custom_ids = [e.ask for e in entries], [e.custom_id for e in entries]
        # held until queued (concurrent batches cannot all pass the bound), the key's share until answered
        with self.queries.room(len(entries), key_of(asks)) as hold:
            batch_id, admitted = self.queries.admission.admit_batch(asks, custom_ids, key_id, claim)
            hold.until(self.queries.queue(admitted, "a batch chunk"))
        return batch_id

    def get(self, batch_id: int, reader: int | None = None) -> Batch:
        """The batch; with `reader` (api/deps.reader_of) only one it may read: its own or nobody's
        (others are 404, not 403: no probing)."""
        with self.db.session() as s:
            row = BatchRepository(s).get(batch_id)
        if row is None or (reader is not None and owner_of(row) not in (None, reader)):
            raise NotFound(f"no batch with id {batch_id}", "batch_id")
        return row


def owner_of(batch: Batch) -> int | None:
    """Whose the batch is: its stored key, else the owner its queries were stamped with (the env
    admin key has no row for `Batch.key_id` to name); None: anonymous."""
    if batch.key_id is not None or not batch.items:
        return batch.key_id
    owner = (batch.items[0].query.request or {}).get("key_id")
    return owner if isinstance(owner, int) else None
