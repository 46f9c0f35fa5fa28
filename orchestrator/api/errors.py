"""Every error leaves as the OpenAI error shape: {"error": {message, type, param, code}}.

A request that fails validation is a 422 on the native API but a 400 on the OpenAI-compatible
routes (those tagged `OPENAI_TAG`): OpenAI and vLLM answer it so, and OpenAI's clients raise
`BadRequestError` for it. There a service error's `type` is OpenAI's category too (`error_type`).
An unexpected failure is a 500 `server_error` that names nothing internal (it is logged), and a
store lock that timed out a 503 to retry."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from orchestrator.services.errors import BudgetInfeasible, Busy, ServiceError

OPENAI_TAG = "openai"
UNSUPPORTED_PARAMETER = "unsupported_parameter"  # OpenAI's codes for a parameter the service does not do
UNSUPPORTED_VALUE = "unsupported_value"
_OWN_CODES = frozenset({UNSUPPORTED_PARAMETER, UNSUPPORTED_VALUE})
_FIELD = re.compile(r"[a-z_][a-z0-9_]*")  # a body field's JSON name; pydantic's union-branch labels are not
_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "none"})
# a body of one type or another (a query or a list of them) fails the branch it is not with one of
# these at the branch's root: beside the other branch's own errors, that says nothing
_WRONG_SHAPE = frozenset({"list_type", "model_attributes_type", "dict_type", "model_type"})
MAX_ERRORS_SHOWN = 20  # a message joins this many errors and counts the rest: joining all made 30 MB 422s
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when `lock_timeout` passes
log = logging.getLogger(__name__)


class StoreBusy(Busy):
    """The store gave up waiting for a lock another writer held: nothing was stored, and the same
    request a moment later will most likely go through."""

    code = "store_busy"
    retry_after_s = 2


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """What every error answers with (OpenAI's error object); /openapi.json documents this model."""

    error: ErrorDetail


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return ErrorResponse(error=ErrorDetail(message=message, type=type_, param=param, code=code)).model_dump()


def field_path(error: dict[str, Any]) -> str | None:
    """The field a validation error is about, as a client names it (`messages.0.content`): its
    place without pydantic's union-branch labels (`function-after[check_storable(), str]`,
    `list[TextPart]`); None for the body as a whole, or a body that is not JSON (whose loc
    holds the offset of the bad character, not a field)."""
    if error.get("type") == "json_invalid":
        return None
    where, *loc = error.get("loc") or ("body",)
    return ".".join(str(p) for p in loc if where != "body" or _field_name(p)) or None


def _field_name(part: int | str) -> bool:
    return isinstance(part, int) or (_FIELD.fullmatch(part) is not None and part not in _TYPE_LABELS)


def validation_error(exc: RequestValidationError, status: int) -> JSONResponse:
    """The request's errors in one message (the first `MAX_ERRORS_SHOWN`, then how many more),
    naming the first one's field as `param`."""
    errors = _relevant(list(exc.errors())) or [{}]
    msg = "; ".join(f"{field_path(e) or 'body'}: {_message(e)}" for e in errors[:MAX_ERRORS_SHOWN])
    if len(errors) > MAX_ERRORS_SHOWN:
        msg += f"; …and {len(errors) - MAX_ERRORS_SHOWN} more"
    code = errors[0].get("type") if errors[0].get("type") in _OWN_CODES else "invalid_value"
    return JSONResponse(error_body(msg, "invalid_request_error", field_path(errors[0]), code), status)


def _relevant(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The errors of the branch the body's shape chose: `{"latency_ms": 0}` sent as one query was
    refused as "body: Input should be a valid list" too, and a list's bad item named no field."""
    own = [e for e in errors if not (e.get("type") in _WRONG_SHAPE and field_path(e) is None)]
    return own or errors


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":  # pydantic's "JSON decode error" alone does not say where
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'undecodable')})"
    return str(error.get("msg", "invalid"))


def _openai_route(request: Request) -> bool:
    route = request.scope.get("route")
    return isinstance(route, APIRoute) and OPENAI_TAG in route.tags


def error_type(request: Request, exc: ServiceError) -> str:
    """A service error's `type`: on the OpenAI-compatible routes OpenAI's category, which its
    clients and tools read (`invalid_request_error` with `code: model_not_found`, not
    `model_not_found` twice); on the native API its code, as always."""
    return openai_type(exc) if _openai_route(request) else exc.code


def openai_type(exc: ServiceError) -> str:
    """OpenAI's category of a service error: a plain reply's and a stream's error event alike."""
    return "server_error" if exc.status_code >= 500 else "invalid_request_error"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, error_type(request, exc), exc.param, exc.code), exc.status_code)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return busy_response(request, exc)

    @app.exception_handler(BudgetInfeasible)
    async def _budget(request: Request, exc: BudgetInfeasible) -> JSONResponse:
        body = error_body(exc.message, error_type(request, exc), exc.param, exc.code)
        body["error"].update(exc.detail)  # the budget asked for, the fastest and the least-energy expert
        return JSONResponse(body, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc, 400 if _openai_route(request) else 422)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), exc.status_code)

    _install_server_errors(app)


def busy_response(request: Request, exc: Busy) -> JSONResponse:
    return JSONResponse(error_body(exc.message, error_type(request, exc), exc.param, exc.code), exc.status_code,
                        headers={"Retry-After": str(exc.retry_after_s)})


def _install_server_errors(app: FastAPI) -> None:
    """Failures no handler above expects. Starlette runs the `Exception` handler in its outermost
    middleware, which sends this response, then raises the exception again for the server to log."""
    @app.exception_handler(OperationalError)
    async def _store(request: Request, exc: OperationalError) -> JSONResponse:
        if lock_timed_out(exc):
            busy = StoreBusy("the store is busy (another writer held a lock too long); try again shortly")
            return busy_response(request, busy)
        return internal_error(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error(request, exc)


def lock_timed_out(exc: OperationalError) -> bool:
    """Whether the store refused for a lock it waited on too long (SQLite busy past its timeout)."""
    return getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE or "database is locked" in str(exc.orig)


def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A 500 naming nothing internal (an exception's text can hold paths, SQL, credentials); the
    operator reads what failed in the log."""
    log.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
    body = error_body("the server failed to answer this request (it was logged)", "server_error", None,
                      "internal_error")
    return JSONResponse(body, 500)
