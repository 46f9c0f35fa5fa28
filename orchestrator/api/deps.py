"""Dependencies: the app's SkillRoute container lives on app.state; answering awaits the window."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import CurrentCaller
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.services.budgets import BudgetService
from orchestrator.services.queries import QueryService


def get_container(request: Request) -> SkillRoute:
    container: SkillRoute = request.app.state.skillroute
    return container


Container = Annotated[SkillRoute, Depends(get_container)]


def get_budgets(c: Container, caller: CurrentCaller) -> BudgetService:
    return BudgetService(c.keys, caller)


Budgets = Annotated[BudgetService, Depends(get_budgets)]  # request budgets over the caller key's defaults

# a row id as a path parameter: SQLite/Postgres integers are 64-bit, so anything larger is a 422, not a 500
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]


async def answered(queries: QueryService, asks: Sequence[Ask]) -> list[int]:
    """Admit the queries (on a worker thread: it routes and writes) and await their answers
    without holding a thread, so any number of requests can wait on the batching window."""
    future = await run_in_threadpool(queries.submit, asks)
    return await asyncio.wrap_future(future)
