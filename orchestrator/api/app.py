"""The FastAPI application over a SkillRoute container."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from orchestrator.api import batches, dashboard, experts, health, metrics, openai_compat, queries, routes
from orchestrator.api.auth import guard, install_auth
from orchestrator.api.errors import install_error_handlers
from orchestrator.container import SkillRoute


def create_app(container: SkillRoute) -> FastAPI:
    app = FastAPI(title="skillroute", version="0.1.0",
                  description="Answers each query with the right few expert LLMs.",
                  dependencies=[Depends(guard)])  # one access policy for every route: api/auth.py
    app.state.skillroute = container
    install_error_handlers(app)
    install_auth(app)
    metrics.install(app, container)
    dashboard.install(app)
    for module in (health, queries, experts, metrics, dashboard, openai_compat, routes, batches):
        app.include_router(module.router)
    return app
