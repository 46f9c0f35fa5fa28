"""Dependencies: the app's SkillRoute container lives on app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from orchestrator.api.auth import CurrentCaller
from orchestrator.container import SkillRoute
from orchestrator.services.budgets import BudgetService


def get_container(request: Request) -> SkillRoute:
    container: SkillRoute = request.app.state.skillroute
    return container


Container = Annotated[SkillRoute, Depends(get_container)]


def get_budgets(c: Container, caller: CurrentCaller) -> BudgetService:
    return BudgetService(c.db, caller)


Budgets = Annotated[BudgetService, Depends(get_budgets)]  # request budgets over the caller key's defaults

# a row id as a path parameter: SQLite/Postgres integers are 64-bit, so anything larger is a 422, not a 500
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
