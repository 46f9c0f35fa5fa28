"""The FastAPI application over a SkillRoute container, its start and stop in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from orchestrator.api import batches, dashboard, experts, health, metrics, openai_compat, queries, routes
from orchestrator.api.auth import guard, install_auth
from orchestrator.api.errors import install_error_handlers
from orchestrator.container import SkillRoute


def lifespan(container: SkillRoute, owns: bool) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the container (a no-op where the CLI already did, with its progress bars); close it
    on shutdown when this app owns it (the inline runtime, a Serve replica), not when a caller
    that built it keeps it (tests, benches)."""

    @asynccontextmanager
    async def run(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(container.start)
        try:
            yield
        finally:
            if owns:
                await run_in_threadpool(container.close)

    return run


def create_app(container: SkillRoute, owns_container: bool = False) -> FastAPI:
    app = FastAPI(title="skillroute", version="0.1.0",
                  description="Answers each query with the right few expert LLMs.",
                  lifespan=lifespan(container, owns_container),
                  dependencies=[Depends(guard)])  # one access policy for every route: api/auth.py
    app.state.skillroute = container
    install_error_handlers(app)
    install_auth(app, container)
    metrics.install(app, container.metrics)
    dashboard.install(app)
    for module in (health, queries, experts, metrics, dashboard, openai_compat, routes, batches):
        app.include_router(module.router)
    return app
