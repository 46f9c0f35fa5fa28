"""Who may call what: one policy for every route, applied as an app-wide dependency.

Reads under /v1, query submissions, and what shows the service's traffic (/metrics, the
dashboard and its data) need a client key (only when client keys are required); every other
write — registering, changing, deleting or profiling experts, now and later — needs the admin
key once one is configured. Probes, docs and the dashboard's static scripts stay open.

A key travels as `Authorization: Bearer <key>`. A browser cannot send that header when it
opens a page, so the key is also taken as the password of HTTP Basic credentials, and the
dashboard's 401 asks for them: the browser prompts once and sends them with its polls too.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from orchestrator.api.errors import error_body
from orchestrator.container import SkillRoute
from orchestrator.services.errors import Forbidden, RateLimited, Unauthorized
from orchestrator.services.keys import AccessControl, Caller, Role

READS = {"GET", "HEAD", "OPTIONS"}
# writes that ask a question rather than change the pool
QUERY_WRITES = {"/v1/queries", "/v1/chat/completions", "/v1/routes", "/v1/batches"}

bearer = HTTPBearer(auto_error=False, description="An API key: `skillroute keys create --admin|--client`.")


def shows_traffic(path: str) -> bool:
    """/metrics and the dashboard: what was asked, who answered, at what cost."""
    return path == "/metrics" or path == "/dashboard" or path.startswith("/dashboard/")


def required_role(method: str, path: str) -> Role | None:
    path = path.rstrip("/") or "/"
    if method in READS:
        return "client" if path.startswith("/v1/") or shows_traffic(path) else None
    feedback = path.startswith("/v1/queries/") and path.endswith("/feedback")  # a client judging an answer
    return "client" if path in QUERY_WRITES or feedback else "admin"


async def guard(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
                ) -> Caller:
    access: AccessControl = request.app.state.access
    role = required_role(request.method, request.url.path)
    token = presented(creds, request.headers.get("authorization"), role)
    if token is None and role != "admin":  # no key to look up: nothing to read, so no worker thread
        caller = access.check(role, token)
    else:
        caller = await run_in_threadpool(access.check, role, token)
    request.state.caller = caller  # batches remember which key submitted them
    return caller


def presented(creds: HTTPAuthorizationCredentials | None, header: str | None, role: Role | None) -> str | None:
    """The key sent, as a bearer token or a Basic password; None when none was. Basic credentials
    that hold no password, where a key is checked, are refused as a key that does not verify is
    (`AccessControl`), not served as anonymous."""
    token = creds.credentials if creds else basic_password(header)
    if role is not None and token is None and is_basic(header):
        raise Unauthorized("invalid API key")
    return token


def basic_password(header: str | None) -> str | None:
    """The password of `Authorization: Basic …` (the user name is ignored), else None."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def is_basic(header: str | None) -> bool:
    """Whether the header sends HTTP Basic credentials, well-formed or not."""
    return (header or "").partition(" ")[0].lower() == "basic"


def challenge(path: str) -> str:
    """Basic for the dashboard (so a browser prompts for the key), Bearer for the API."""
    return 'Basic realm="skillroute", charset="UTF-8"' if shows_traffic(path) and path != "/metrics" else "Bearer"


async def get_caller(request: Request) -> Caller:
    caller: Caller = getattr(request.state, "caller", Caller(None))
    return caller


CurrentCaller = Annotated[Caller, Depends(get_caller)]


def install_auth(app: FastAPI, container: SkillRoute) -> None:
    """Access control over the container's keys, by its settings' `auth` section."""
    app.state.access = AccessControl(container.keys, container.settings.auth)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        body = error_body(exc.message, "invalid_request_error", None, exc.code)
        return JSONResponse(body, 401, headers={"WWW-Authenticate": challenge(request.url.path.rstrip("/"))})

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse(error_body(exc.message, "invalid_request_error", None, exc.code), 403)

    @app.exception_handler(RateLimited)
    async def _limited(_: Request, exc: RateLimited) -> JSONResponse:
        body = error_body(exc.message, "requests", None, exc.code)
        return JSONResponse(body, 429, headers={"Retry-After": str(max(1, round(exc.retry_after_s + 0.5)))})
