"""Dependencies: the app's SkillRoute container lives on app.state; answering awaits the window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import CurrentCaller
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.services.batches import BatchEntry
from orchestrator.services.budgets import BudgetService
from orchestrator.services.errors import NotReady
from orchestrator.services.idempotency import HEADER, Claim, Prior, fingerprint, scope_of
from orchestrator.services.keys import Caller
from orchestrator.services.queries import QueryService
from orchestrator.store.models import INTEGER_MAX, Query


# The dependencies below that touch no store are `async def`: FastAPI runs a plain `def` on a
# worker thread, and at a hundred requests a second those hops cost more than the work.
async def get_raw_container(request: Request) -> SkillRoute:
    container: SkillRoute = request.app.state.skillroute
    return container


RawContainer = Annotated[SkillRoute, Depends(get_raw_container)]  # for the probes, whatever the start-up phase


async def get_container(c: RawContainer) -> SkillRoute:
    """The container once its pool is loaded; while a start is still loading or profiling it, a
    503 naming what is running (routing then would load the pool again, once per request)."""
    status = c.startup.status
    if not status.serving:
        raise NotReady(status.describe())
    return c


Container = Annotated[SkillRoute, Depends(get_container)]


async def get_budgets(c: Container, caller: CurrentCaller) -> BudgetService:
    if caller.key_id is None:  # no key: `KeyService.budget` reads nothing, so no worker thread
        return BudgetService(c.keys, caller)
    return await run_in_threadpool(BudgetService, c.keys, caller)


Budgets = Annotated[BudgetService, Depends(get_budgets)]  # request budgets over the caller key's defaults

# a row id as a path parameter: the id columns are INTEGER, 32-bit on PostgreSQL (64-bit on SQLite),
# so a larger id is a 422 naming it rather than PostgreSQL's "integer out of range" as a 500
RowId = Annotated[int, Path(ge=1, le=INTEGER_MAX)]


@dataclass(frozen=True)
class IdempotentRequest:
    """A POST that may carry an `Idempotency-Key`: sent again with it, the first request's
    queries or batch come back instead of new ones (orchestrator/services/idempotency.py)."""

    c: SkillRoute
    scope: str
    endpoint: str
    key: str | None
    owner: int | None = None  # who asks (`Caller.owner`): its queries are its own to read and judge

    def claim(self, body: object) -> Claim | None:
        return None if self.key is None else Claim(self.scope, self.key, self.endpoint, fingerprint(body))

    def stamped(self, asks: Sequence[Ask]) -> list[Ask]:
        """The asks as the key that sent them (`Ask.key_id`: a stored key's id, or ENV_ADMIN)."""
        return [a.model_copy(update={"key_id": self.owner}) for a in asks] if self.owner else list(asks)

    async def answered(self, asks: Sequence[Ask], body: object) -> list[Query]:
        """Admit the queries (on a worker thread: it routes and writes) and await their stored
        rows without holding a thread, so any number of requests can wait on the batching
        window; once per key: a retry awaits the first request's queries instead."""
        queries, asks = self.c.queries, self.stamped(asks)
        done = await run_in_threadpool(self.c.idempotency.once, self.claim(body),
                                       lambda claim: queries.submit(asks, claim))
        if isinstance(done, Future):
            return await asyncio.wrap_future(done)
        assert isinstance(done, Prior)
        await settled(queries, done.query_ids, self.c.settings.idempotency.retry_wait_s)
        return await run_in_threadpool(queries.get_many, done.query_ids)

    async def batch(self, entries: Sequence[BatchEntry], key_id: int | None, body: object) -> int:
        """Submit the batch, once per key; returns its id (a retry: the first request's)."""
        entries = [replace(e, ask=a) for e, a in zip(entries, self.stamped([e.ask for e in entries]), strict=True)]
        done = await run_in_threadpool(self.c.idempotency.once, self.claim(body),
                                       lambda claim: self.c.batches.submit(entries, key_id, claim))
        if isinstance(done, Prior):
            assert done.batch_id is not None  # a key first sent to /v1/batches names its batch
            return done.batch_id
        return done


async def get_idempotent(
    request: Request, c: Container, caller: CurrentCaller,
    key: Annotated[str | None, Header(alias=HEADER, min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
                                      description="Sent again with the same key (and body), the request "
                                                  "returns what the first one created instead of creating it "
                                                  "again. Visible ASCII, 1-255 characters.")] = None,
) -> IdempotentRequest:
    route = request.scope.get("route")
    # an admin key's queries are its own too, as its batches are: not anonymous ones; the env
    # admin key's too, and its idempotency keys are its own (they were the anonymous callers')
    return IdempotentRequest(c, scope_of(caller.owner), str(getattr(route, "path", request.url.path)), key,
                             caller.owner)


# No key has id 0 (row ids start at 1): reading as key 0 is reading only what no key asked.
ANONYMOUS_ONLY = 0


def reader_of(caller: Caller) -> int | None:
    """Whose queries and batches the caller may read and judge: an admin all (None), a client key
    its own and anonymous ones, a caller without a key only anonymous ones (not every key's)."""
    if caller.role == "admin":
        return None
    return caller.key_id if caller.key_id is not None else ANONYMOUS_ONLY


Idempotent = Annotated[IdempotentRequest, Depends(get_idempotent)]


async def settled(queries: QueryService, ids: Sequence[int], within_s: float) -> None:
    """Wait, holding no thread, until none of the queries is still accepted (being answered by
    the window, or by the recovery of a restart) or `within_s` has passed."""
    deadline, pause = time.monotonic() + within_s, 0.05
    while time.monotonic() < deadline:
        rows = await run_in_threadpool(queries.get_many, ids)
        if all(q.status != "accepted" for q in rows):
            return
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))  # between polls of the store
        pause = min(pause * 2, 1.0)
