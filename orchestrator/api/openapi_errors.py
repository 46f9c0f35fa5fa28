"""The OpenAPI document's error responses as the service sends them.

FastAPI documents a body that fails validation as a 422 with its own `HTTPValidationError`
schema ({"detail": [...]}), but every error leaves in the OpenAI shape (`errors.ErrorResponse`),
and on the OpenAI-compatible routes (tagged `OPENAI_TAG`) such a request is a 400
(`errors.install_error_handlers`). A client generated from /openapi.json would otherwise expect a
status and a body it never gets.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from orchestrator.api.errors import OPENAI_TAG, ErrorResponse

FASTAPI_DEFAULT = "Validation Error"  # FastAPI's description; a route's own one is kept
_INVALID = "The request is invalid: every problem in `message`, the first one's field as `param`."
_REF = "#/components/schemas/ErrorResponse"
# what any /v1 route may answer, and any with an id in its path; a route's own (its 409, a 503 of
# the routes that admit queries) are on the route. Only validation errors were documented before.
_ANY_V1 = {"401": {"description": "An API key that is not valid, or none where keys are required."},
           "429": {"description": "Past the key's requests a minute (`Retry-After`)."}}
_BY_ID = {"404": {"description": "Nothing with that id, or nothing the caller may read."}}
ADMITTING: dict[int | str, dict[str, str]] = {
    429: {"description": "Past the key's requests a minute, or its share of the queries waiting (`Retry-After`)."},
    503: {"description": "Overloaded (`Retry-After`), still starting, or the experts' models cannot be used."}}


def install_openapi(app: FastAPI) -> None:
    """Build the document once, on first request, with the validation responses rewritten."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = _with_error_shape(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it


def _with_error_shape(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_schema.pop("$defs"), ErrorResponse=error_schema)
    for path, operation in ((p, op) for p, ops in schema.get("paths", {}).items() for op in ops.values()):
        responses = operation.setdefault("responses", {})
        for status, response in {**(_ANY_V1 if path.startswith("/v1/") else {}),
                                 **(_BY_ID if "{" in path else {})}.items():
            responses.setdefault(status, dict(response))
        if (invalid := responses.pop("422", None)) is not None:
            status = "400" if OPENAI_TAG in operation.get("tags", ()) else "422"
            described = invalid.get("description")
            responses[status] = {"description": _INVALID if described in (None, FASTAPI_DEFAULT) else described}
        for status, response in responses.items():
            if status[:1] in ("4", "5"):  # a route's own error statuses come with a description only
                response["content"] = {"application/json": {"schema": {"$ref": _REF}}}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema
