"""/openapi.json documents errors as they are sent: the OpenAI error shape everywhere, and a body
that fails validation as a 400 on the OpenAI-compatible routes and a 422 on the native API."""

from __future__ import annotations

from orchestrator.api.openapi_errors import ErrorResponse

REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _responses(doc: dict, method: str, path: str) -> dict:
    return doc["paths"][path][method]["responses"]


def test_validation_errors_are_documented_with_the_status_and_body_they_are_sent_with(client) -> None:
    doc = client.get("/openapi.json").json()
    chat = _responses(doc, "post", "/v1/chat/completions")
    assert "422" not in chat and chat["400"]["content"]["application/json"]["schema"] == REF
    native = _responses(doc, "post", "/v1/queries")
    assert "400" not in native and native["422"]["content"]["application/json"]["schema"] == REF
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    sent_chat = client.post("/v1/chat/completions", json={"messages": "not a list"})
    sent_native = client.post("/v1/queries", json={"query": 3})
    assert (sent_chat.status_code, sent_native.status_code) == (400, 422)
    for sent in (sent_chat, sent_native):
        assert ErrorResponse.model_validate(sent.json()).error.param is not None


def test_a_route_s_own_error_statuses_keep_their_description_and_get_the_error_body(client) -> None:
    doc = client.get("/openapi.json").json()
    removal = _responses(doc, "delete", "/v1/experts/{expert_id}")
    own = {"description": "No expert with that id.", "content": {"application/json": {"schema": REF}}}
    assert removal["404"] == own
    assert removal["422"]["description"].startswith("A field that cannot change")
    missing = client.delete("/v1/experts/999999")
    assert missing.status_code == 404 and ErrorResponse.model_validate(missing.json()).error.message


def test_the_errors_a_route_sends_are_documented_on_it(client) -> None:
    """Only validation errors (and an expert's PATCH and DELETE) were documented: a client generated
    from the document expected no 404 from reading a query back, no 409 from feedback, no 429 or
    503 from asking one. Each sent here is documented on its route with the error body."""
    doc = client.get("/openapi.json").json()
    expected = {("get", "/v1/queries/{query_id}"): {"401", "404", "429"},
                ("post", "/v1/queries/{query_id}/feedback"): {"404", "409"},
                ("get", "/v1/batches/{batch_id}"): {"404"}, ("get", "/v1/models/{model}"): {"404"},
                ("post", "/v1/queries"): {"429", "503"}, ("post", "/v1/batches"): {"429", "503"},
                ("post", "/v1/chat/completions"): {"404", "429", "503"}, ("post", "/v1/experts"): {"403"}}
    for (method, path), statuses in expected.items():
        documented = _responses(doc, method, path)
        assert statuses <= set(documented), (method, path, sorted(documented))
        assert all(documented[s]["content"]["application/json"]["schema"] == REF for s in statuses)
    assert "401" not in _responses(doc, "get", "/health")  # not behind a key
    chat = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    sent = [client.get("/v1/queries/999999"), client.get("/v1/batches/999999"), client.get("/v1/models/nope"),
            client.post("/v1/chat/completions", json=chat)]
    assert [r.status_code for r in sent] == [404] * 4
