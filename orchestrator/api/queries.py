"""/v1/queries: answer one query or a batch, and read a stored query back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import CurrentCaller
from orchestrator.api.deps import Budgets, Container, Idempotent, RawContainer, RowId, reader_of
from orchestrator.api.openapi_errors import ADMITTING
from orchestrator.api.schemas import FeedbackOut, FeedbackRequest, QueryRequest, QueryResponse

router = APIRouter(prefix="/v1/queries", tags=["queries"])

MAX_BATCH = 64
# The bound is on the list's type, so pydantic checks it before any item: checked after, a list of
# a million `{}` (3 MB) was validated item by item (8 s of CPU) and refused with every item's error
# (30 MB), never naming the limit. The one-query branch's "not a dict" error is left out (`_relevant`).
QueryList = Annotated[list[QueryRequest], Field(min_length=1, max_length=MAX_BATCH)]


@router.post("", response_model=QueryResponse | list[QueryResponse], responses=ADMITTING)
async def create_query(
    c: Container, budgets: Budgets, once: Idempotent, body: Annotated[QueryRequest | QueryList, Body()]
) -> QueryResponse | list[QueryResponse]:
    """Answer a query (or a list of up to 64, batched so each model loads once).

    With a budget (`latency_ms`, `energy_j`, or the API key's defaults) the experts are the exact
    best subset within it; a budget no expert fits is a 422 naming the cheapest options. Sent
    again with the same `Idempotency-Key`, the first request's queries are returned (awaited
    if they are still being answered), not asked again."""
    items = body if isinstance(body, list) else [body]
    k = c.settings.default_k
    rows = await once.answered([q.to_ask(budgets.resolve(q.latency_ms, q.energy_j), k) for q in items], body)
    out = [QueryResponse.from_row(q) for q in rows]
    return out if isinstance(body, list) else out[0]


@router.post("/{query_id}/feedback", response_model=FeedbackOut,
             responses={409: {"description": "The query has no answer to judge (it failed, or is still running)."}})
async def give_feedback(c: Container, caller: CurrentCaller, query_id: RowId, body: FeedbackRequest) -> FeedbackOut:
    """Say whether the answer was right (`correct`) or what it should have been (`answer`): the
    experts that answered are marked, and the router learns from it. Given again, it replaces
    the first (it counts once)."""
    verdict = await run_in_threadpool(c.feedback.give, query_id, body.correct, body.answer, reader_of(caller))
    return FeedbackOut(query_id=verdict.query_id, experts=verdict.marks, replaced=verdict.replaced)


@router.get("/{query_id}", response_model=QueryResponse)
async def get_query(c: RawContainer, caller: CurrentCaller, query_id: RowId) -> QueryResponse:
    """A stored query (readable while the service is still starting); a client key reads only its
    own and anonymous ones (another key's is a 404, as if it did not exist)."""
    return QueryResponse.from_row(await run_in_threadpool(c.queries.get, query_id, reader_of(caller)))
