"""A text field's length bound is counted in characters, whatever the field's shape: put after
the storable-text checks or on `… | None`, pydantic checked it as any sequence's and the 422
said "items" to a client that sent a string."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from orchestrator.api.batches import BatchQuery
from orchestrator.api.openai_protocol import ChatMessageIn
from orchestrator.api.routes import RouteRequest
from orchestrator.api.schemas import ExpertCreate, ExpertUpdate, FeedbackRequest, QueryRequest

MODEL = {"kind": "mock", "source": "m"}

CASES: list[tuple[type[BaseModel], dict[str, Any], str]] = [
    (QueryRequest, {"query": "x" * 8001}, "8000"),
    (RouteRequest, {"query": "x" * 8001}, "8000"),
    (FeedbackRequest, {"answer": "x" * 2001}, "2000"),
    (ExpertCreate, {"name": "a", "model": MODEL, "system_prompt": "x" * 4001}, "4000"),
    (ExpertUpdate, {"system_prompt": "x" * 4001}, "4000"),
    (ChatMessageIn, {"role": "user", "content": "hi", "name": "n" * 65}, "64"),
    (BatchQuery, {"query": "q", "custom_id": "c" * 65}, "64"),
]


@pytest.mark.parametrize(("model", "body", "bound"), CASES, ids=[f"{c[0].__name__}-{c[2]}" for c in CASES])
def test_an_overlong_text_is_refused_in_characters(model: type[BaseModel], body: dict[str, Any], bound: str) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    assert [e["msg"] for e in caught.value.errors()] == [f"String should have at most {bound} characters"]


@pytest.mark.parametrize("model", [FeedbackRequest, RouteRequest])
def test_a_bounded_optional_text_still_refuses_nul_and_keeps_its_schema_bounds(model: type[BaseModel]) -> None:
    field = "answer" if model is FeedbackRequest else "query"
    with pytest.raises(ValidationError, match="NUL"):
        model.model_validate({field: "a\x00b"})
    shape = model.model_json_schema()["properties"][field]["anyOf"][0]
    assert shape["minLength"] == 1 and shape["maxLength"] in (2000, 8000)
