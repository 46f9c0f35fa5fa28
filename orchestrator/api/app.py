"""The FastAPI application over a SkillRoute container, its start and stop in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from orchestrator.api import batches, dashboard, experts, health, metrics, openai_compat, queries, routes
from orchestrator.api.auth import guard, install_auth
from orchestrator.api.errors import install_error_handlers
from orchestrator.api.limits import BodyLimit
from orchestrator.api.openapi_errors import install_openapi
from orchestrator.container import SkillRoute


def lifespan(container: SkillRoute, owns: bool,
             background: bool) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the container and close it on shutdown when this app owns it (the inline runtime, a
    Serve replica), not when a caller that built it keeps it (tests, benches).

    `background` (how the service runs: `skillroute serve`, a Serve replica under KubeRay): only
    the schema is migrated before HTTP is served; loading the pool, profiling and the recovery
    of what a crash left run behind it, and /ready says when they are done. Otherwise the start
    runs to the end first (a test's client then meets a service that is fully up)."""
    start = container.start_in_background if background else container.start

    @asynccontextmanager
    async def run(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(start)
        try:
            yield
        finally:
            if owns:
                await run_in_threadpool(container.close)

    return run


def create_app(container: SkillRoute, owns_container: bool = False, background_start: bool = False) -> FastAPI:
    app = FastAPI(title="skillroute", version="0.1.0",
                  description="Answers each query with the right few expert LLMs.",
                  lifespan=lifespan(container, owns_container, background_start),
                  dependencies=[Depends(guard)])  # one access policy for every route: api/auth.py
    app.state.skillroute = container
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=container.settings.http.max_body_bytes)
    install_auth(app, container)
    metrics.install(app, container.metrics)
    dashboard.install(app)
    for module in (health, queries, experts, metrics, dashboard, openai_compat, routes, batches):
        app.include_router(module.router)
    install_openapi(app)
    return app
