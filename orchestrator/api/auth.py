"""Who may call what: one policy for every route, applied as an app-wide dependency.

Reads under /v1 and query submissions need a client key (only when client keys are required);
every other write — registering, changing, deleting or profiling experts, now and later —
needs the admin key once one is configured. Probes and docs stay open.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.api.errors import error_body
from orchestrator.container import SkillRoute
from orchestrator.services.errors import Forbidden, RateLimited, Unauthorized
from orchestrator.services.keys import AccessControl, Caller, Role

READS = {"GET", "HEAD", "OPTIONS"}
# writes that ask a question rather than change the pool
QUERY_WRITES = {"/v1/queries", "/v1/chat/completions", "/v1/routes", "/v1/batches"}

bearer = HTTPBearer(auto_error=False, description="An API key: `skillroute keys create --admin|--client`.")


def required_role(method: str, path: str) -> Role | None:
    path = path.rstrip("/") or "/"
    if method in READS:
        return "client" if path.startswith("/v1/") else None
    feedback = path.startswith("/v1/queries/") and path.endswith("/feedback")  # a client judging an answer
    return "client" if path in QUERY_WRITES or feedback else "admin"


def guard(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    access: AccessControl = request.app.state.access
    caller = access.check(required_role(request.method, request.url.path), creds.credentials if creds else None)
    request.state.caller = caller  # batches remember which key submitted them
    return caller


def get_caller(request: Request) -> Caller:
    caller: Caller = getattr(request.state, "caller", Caller(None))
    return caller


CurrentCaller = Annotated[Caller, Depends(get_caller)]


def install_auth(app: FastAPI, container: SkillRoute) -> None:
    """Access control over the container's keys, by its settings' `auth` section."""
    app.state.access = AccessControl(container.keys, container.settings.auth)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        body = error_body(exc.message, "invalid_request_error", None, exc.code)
        return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse(error_body(exc.message, "invalid_request_error", None, exc.code), 403)

    @app.exception_handler(RateLimited)
    async def _limited(_: Request, exc: RateLimited) -> JSONResponse:
        body = error_body(exc.message, "requests", None, exc.code)
        return JSONResponse(body, 429, headers={"Retry-After": str(max(1, round(exc.retry_after_s + 0.5)))})
