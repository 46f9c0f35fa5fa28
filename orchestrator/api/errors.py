"""Every error leaves as the OpenAI error shape: {"error": {message, type, param, code}}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from orchestrator.services.errors import BudgetInfeasible, Busy, ServiceError


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.code, exc.param, exc.code), exc.status_code)

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.code, exc.param, exc.code), exc.status_code,
                            headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(BudgetInfeasible)
    async def _budget(_: Request, exc: BudgetInfeasible) -> JSONResponse:
        body = error_body(exc.message, exc.code, exc.param, exc.code)
        body["error"].update(exc.detail)  # the budget asked for, the fastest and the least-energy expert
        return JSONResponse(body, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        msg = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_body(msg, "invalid_request_error", param, "invalid_value"), 422)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), exc.status_code)
