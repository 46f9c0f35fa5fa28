"""Dependencies: the app's SkillRoute container lives on app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from orchestrator.container import SkillRoute


def get_container(request: Request) -> SkillRoute:
    container: SkillRoute = request.app.state.skillroute
    return container


Container = Annotated[SkillRoute, Depends(get_container)]
