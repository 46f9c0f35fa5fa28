"""The FastAPI application over a SkillRoute container."""

from __future__ import annotations

from fastapi import FastAPI

from orchestrator.api import experts, health, queries
from orchestrator.api.errors import install_error_handlers
from orchestrator.container import SkillRoute


def create_app(container: SkillRoute) -> FastAPI:
    app = FastAPI(title="skillroute", version="0.1.0",
                  description="Answers each query with the right few expert LLMs.")
    app.state.skillroute = container
    install_error_handlers(app)
    for module in (health, queries, experts):
        app.include_router(module.router)
    return app
