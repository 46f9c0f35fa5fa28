"""/v1/batches: submit many queries at once (202 + id), then poll status and per-query results."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import CurrentCaller
from orchestrator.api.deps import Budgets, Container, Idempotent, RawContainer, RowId, reader_of
from orchestrator.api.openapi_errors import ADMITTING
from orchestrator.api.schemas import NameText, QueryRequest
from orchestrator.services.batches import BatchEntry, counts
from orchestrator.store.models import Batch, BatchItem
from orchestrator.store.repositories.queries import decision_of

router = APIRouter(prefix="/v1/batches", tags=["batches"])

MAX_BATCH = 1000


class BatchQuery(QueryRequest):
    custom_id: NameText | None = Field(default=None, description="Yours, echoed in the results.")


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[BatchQuery] = Field(min_length=1, max_length=MAX_BATCH)

    @field_validator("queries")
    @classmethod
    def _custom_ids_are_distinct(cls, queries: list[BatchQuery]) -> list[BatchQuery]:
        """A result is found by its custom_id (OpenAI's batches require them distinct): two
        queries under one could be told apart only by position."""
        first: dict[str, int] = {}
        for i, q in enumerate(queries):
            if q.custom_id is not None and (j := first.setdefault(q.custom_id, i)) != i:
                raise ValueError(f"queries.{i}.custom_id: {q.custom_id!r} is already the custom_id of queries.{j}; "
                                 "each names one query")
        return queries


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchResult(BaseModel):
    custom_id: str | None
    query_id: int
    status: str = Field(description="accepted (queued or running) → done | failed")
    answer: str | None
    error: str | None
    recruited: list[str]
    aggregator: str | None


class BatchOut(BaseModel):
    id: int
    object: Literal["batch"] = "batch"
    status: Literal["in_progress", "completed"]
    created_at: datetime
    request_counts: RequestCounts
    results: list[BatchResult]

    @classmethod
    def from_row(cls, b: Batch) -> BatchOut:
        n = counts(b)
        return cls(id=b.id, status=n.status, created_at=b.created_at,
                   request_counts=RequestCounts(total=n.total, completed=n.completed, failed=n.failed),
                   results=[_result(i) for i in b.items])


def _result(item: BatchItem) -> BatchResult:
    q, d = item.query, decision_of(item.query)
    return BatchResult(custom_id=item.custom_id, query_id=q.id, status=q.status, answer=q.answer, error=q.error,
                       recruited=list(d.recruited) if d else [], aggregator=d.aggregator if d else None)


@router.post("", response_model=BatchOut, status_code=202, responses=ADMITTING)
async def create_batch(c: Container, budgets: Budgets, caller: CurrentCaller, once: Idempotent, body: BatchCreate,
                       response: Response) -> BatchOut:
    """Queue the queries behind the live traffic's batching window; poll the Location for results.
    A query that cannot be taken refuses the batch (4xx naming it) and nothing is stored. Sent
    again with the same `Idempotency-Key`, the first request's batch is returned."""
    k = c.settings.default_k
    entries = [BatchEntry(q.to_ask(budgets.resolve(q.latency_ms, q.energy_j), k), q.custom_id) for q in body.queries]
    batch_id = await once.batch(entries, caller.key_id, body)
    response.headers["Location"] = f"/v1/batches/{batch_id}"
    return BatchOut.from_row(await run_in_threadpool(c.batches.get, batch_id))


@router.get("/{batch_id}", response_model=BatchOut)
async def get_batch(c: RawContainer, caller: CurrentCaller, batch_id: RowId) -> BatchOut:
    """The batch's progress and results (readable while the service is still starting)."""
    return BatchOut.from_row(await run_in_threadpool(c.batches.get, batch_id, reader_of(caller)))
