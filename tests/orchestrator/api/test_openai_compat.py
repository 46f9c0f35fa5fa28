"""/v1/chat/completions and /v1/models: the official openai client over real HTTP, SSE, direct experts."""

import json
import time

import openai
import pytest
from fastapi.testclient import TestClient

from experts.mock import MockBackend
from experts.types import BaseModelSpec, SamplingParams
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import AggregatorConfig
from orchestrator.settings import LearningSettings
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

ASK = [{"role": "user", "content": "What is 12*12?"}]


def test_official_openai_client_gets_a_completion_and_a_stream(container, serve):
    with serve(create_app(container)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused-in-open-mode", max_retries=0)
        done = client.chat.completions.create(model="auto", messages=ASK, seed=4)
        assert done.choices[0].message.content and done.model == container.pool.snapshot.aggregator
        assert done.model_extra["skillroute"]["recruited"] and done.usage.total_tokens > 0
        chunks = list(client.chat.completions.create(model="auto", messages=ASK, seed=4, stream=True))
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == done.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert [m.id for m in client.models.list()][0] == "auto"


def test_reply_names_the_aggregator_and_carries_the_decision(client, container):
    r = client.post("/v1/chat/completions", json={"model": "auto", "messages": ASK, "seed": 2, "k": 3})
    assert r.status_code == 200, r.text
    body, info = r.json(), r.json()["skillroute"]
    assert body["object"] == "chat.completion" and body["model"] == info["aggregator"]
    assert r.headers["x-skillroute-experts"].split(",") == info["recruited"] and len(info["recruited"]) == 3
    assert r.headers["x-skillroute-aggregator"] == info["aggregator"]
    assert r.headers["x-skillroute-query-id"] == str(info["query_id"]) and r.headers["x-skillroute-skills"]
    stored = client.get(f"/v1/queries/{info['query_id']}").json()
    assert stored["recruited"] == info["recruited"]
    assert body["choices"][0]["message"]["content"] == stored["generations"][-1]["text"]


@pytest.mark.both_databases
def test_created_is_unix_time_whatever_the_server_s_zone(client, tokyo_time):
    """`created` comes from the stored query's creation time, which SQLite handed back naive and
    Python then read as local time: 9 h early under Asia/Tokyo."""
    before = time.time()
    r = client.post("/v1/chat/completions", json={"model": "auto", "messages": ASK})
    assert r.status_code == 200, r.text
    assert before - 2 <= r.json()["created"] <= time.time() + 1


def test_finish_reason_is_length_where_the_reply_used_its_whole_token_cap(client):
    """The backend's own reason, streamed and not: a reply that used every token of its cap is
    "length", even one that would have ended right there (gamma's and the aggregator's answers are
    3 words), as llama.cpp, vLLM and OpenAI say it; one that ended on its own or at a stop string
    with tokens to spare is "stop"."""
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    cases = [("gamma", {"max_tokens": 3}, 3, "length"), ("gamma", {"max_tokens": 3, "stop": " ("}, 2, "stop"),
             ("gamma", {"max_tokens": 2}, 2, "length"), ("gamma", {"max_tokens": 4}, 3, "stop"),
             ("auto", {"max_tokens": 3}, 3, "length"), ("auto", {"max_tokens": 4}, 3, "stop")]
    for model, extra, words, expected in cases:
        plain = oai.chat.completions.create(model=model, messages=ASK, **extra)
        chunks = list(oai.chat.completions.create(model=model, messages=ASK, stream=True, **extra))
        assert len((plain.choices[0].message.content or "").split()) == words, (model, extra)  # a word a token
        assert plain.choices[0].finish_reason == chunks[-1].choices[0].finish_reason == expected, (model, extra)


def test_a_reply_cut_by_its_expert_s_own_max_tokens_is_length(tmp_path, embedder):
    """An expert's sampling.max_tokens below the pool's limit cuts its reply: that is "length",
    though its tokens never reached the pool's limit (the guess said "stop")."""
    terse = mock_expert("terse", "m2").model_copy(update={"sampling": SamplingParams(max_tokens=2)})
    c = SkillRoute(quiet_settings(tmp_path), small_pool([terse]), embedder=embedder,
                   factory=lambda spec: MockBackend(spec.key))
    with TestClient(create_app(c, owns_container=True)) as client:
        oai = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
        plain = oai.chat.completions.create(model="terse", messages=ASK)
        chunks = list(oai.chat.completions.create(model="terse", messages=ASK, stream=True))
    assert plain.usage.completion_tokens == 2
    assert plain.choices[0].finish_reason == chunks[-1].choices[0].finish_reason == "length"


def test_an_expert_name_asks_that_expert_alone(client):
    r = client.post("/v1/chat/completions", json={"model": "gamma", "messages": ASK})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "gamma" and body["skillroute"]["recruited"] == ["gamma"]
    assert body["skillroute"]["aggregator"] is None and body["skillroute"]["router"] == "direct"
    roles = [g["role"] for g in client.get(f"/v1/queries/{body['skillroute']['query_id']}").json()["generations"]]
    assert roles == ["expert"]


def test_stream_is_standard_sse_ending_in_done(client):
    body = {"model": "auto", "messages": ASK, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-skillroute-experts"]
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["usage"]["total_tokens"] > 0 and events[-1]["choices"] == []
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and "skillroute" in events[-2]  # the stored record


def test_multi_turn_chat_is_answered(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a noble gas."}]
    r = client.post("/v1/chat/completions", json={"model": "auto", "messages": msgs, "seed": 1})
    assert r.status_code == 200, r.text
    assert "User: Name a noble gas." in client.get(f"/v1/queries/{r.json()['skillroute']['query_id']}").json()["query"]


def test_models_lists_auto_and_the_ready_experts(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["auto", "alpha", "beta", "gamma"]
    assert client.get("/v1/models/beta").json()["owned_by"] == "skillroute"
    assert client.get("/v1/models/nope").json()["error"]["code"] == "model_not_found"


def test_a_service_error_on_an_openai_route_has_openai_s_type_and_keeps_its_code(client):
    """OpenAI's clients and tools read `type` as a category: an unknown model is
    `invalid_request_error` with `code: model_not_found` (it was `model_not_found` twice); the
    native API keeps its code as the type."""
    error = client.get("/v1/models/nope").json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found")
    chat = {"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    native = client.get("/v1/queries/999999").json()["error"]
    assert native["type"] == native["code"] == "not_found"


def test_bad_chats_are_4xx_in_openai_shape(client):
    """A request that fails validation is a 400 invalid_request_error, as OpenAI's and vLLM's
    (the native API's 422 made OpenAI clients raise UnprocessableEntityError), naming the field
    as a client does: without pydantic's union labels."""
    image = [{"type": "text", "text": "Hi"}, {"type": "image_url"}]
    invalid = [({"messages": []}, "messages"), ({"n": 2}, "n"), ({"stop": 5}, "stop"), ({"stop": ["a"] * 5}, "stop"),
               ({"messages": [{"role": "user", "content": image}]}, "messages.0.content"),
               ({"messages": [{"role": "user", "content": {"a": 1}}]}, "messages.0.content")]
    for extra, param in invalid:
        r = client.post("/v1/chat/completions", json={"model": "auto", "messages": ASK, **extra})
        error = r.json()["error"]
        assert r.status_code == 400 and error["type"] == "invalid_request_error", (extra, r.text)
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, (extra, error)
        assert "[" not in error["message"] and "function-after" not in error["message"], error
    for body, status in [({"model": "nobody", "messages": ASK}, 404),
                         ({"model": "auto", "messages": [{"role": "user", "content": "   "}]}, 400)]:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text


def test_a_body_that_is_not_json_is_a_400_naming_no_field(client):
    r = client.post("/v1/chat/completions", content=b'{"model": "auto",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] is None, r.text
    assert "not valid JSON" in r.json()["error"]["message"]
    native = client.post("/v1/queries", content=b'{"query":', headers={"content-type": "application/json"})
    assert native.status_code == 422 and native.json()["error"]["param"] is None, native.text  # the native API's own


def test_the_official_client_raises_bad_request_for_a_bad_chat(client):
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(model="auto", messages=ASK, n=2)
    assert raised.value.param == "n" and raised.value.type == "invalid_request_error"
    assert raised.value.code == "invalid_value"


def test_ready_and_docs(client):
    assert client.get("/ready").status_code == 200
    assert client.get("/docs").status_code == 200


def test_ready_is_503_while_no_expert_is_ready(empty_container):
    with TestClient(create_app(empty_container)) as tc:
        r = tc.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        health = tc.get("/health")
        assert health.status_code == 200 and health.json()["pool"] == empty_container.pool_config.name


def test_a_voted_reply_is_the_vote_s_not_the_last_expert_s(tmp_path, embedder):
    """A vote pool answers with the weighted vote; the chat reply is that answer, named after
    the expert that wrote it, even when the last answer drawn lost the vote."""
    replies = {"m1": "Answer: B", "m2": "Answer: A"}
    pool = small_pool([mock_expert("alpha", "m1"), mock_expert("beta", "m2")])
    pool = pool.model_copy(update={"aggregator": AggregatorConfig(mode="vote")})
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder,
                   factory=lambda spec: MockBackend(spec.key, answer=replies[spec.source]))
    with TestClient(create_app(c, owns_container=True)) as client:
        r = client.post("/v1/chat/completions", json={"model": "auto", "messages": ASK, "k": 2, "mode": "topk"})
        assert r.status_code == 200, r.text
        body = r.json()
        stored = client.get(f"/v1/queries/{body['skillroute']['query_id']}").json()
    first, last = stored["generations"][0], stored["generations"][-1]
    assert first["text"] != last["text"]  # the two disagreed: the first-ranked, heavier one won
    assert body["choices"][0]["message"]["content"] == f"Answer: {stored['answer']}" == first["text"]
    assert body["model"] == first["expert"]


def events_of(client, body):  # type: ignore[no-untyped-def]
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(ln.removeprefix("data: ")) for ln in r.iter_lines() if ln.startswith("data: {")]


def test_a_vote_s_own_reply_names_the_same_model_streamed_or_not(tmp_path, embedder):
    """A vote pool's reply ("Answer: C") is no one generation's: a plain request names it
    `auto`; the stream named the first recruited expert, fixed before the vote was known."""
    pool = small_pool([mock_expert("alpha", "m1"), mock_expert("beta", "m2"), mock_expert("gamma", "m3")])
    pool = pool.model_copy(update={"aggregator": AggregatorConfig(mode="vote")})
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder, factory=lambda spec: MockBackend(spec.key))
    with TestClient(create_app(c, owns_container=True)) as client:
        lettered = [{"role": "user", "content": "What is 12*12?\nA. 124\nB. 144\nC. 142\nD. 122"}]  # a vote's own
        body = {"model": "auto", "messages": lettered, "k": 3, "mode": "topk", "seed": 0}
        plain = client.post("/v1/chat/completions", json=body).json()
        events = events_of(client, body)
    assert plain["model"] == "auto" and plain["choices"][0]["message"]["content"] == "Answer: C"
    assert {e["model"] for e in events} == {"auto"}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "Answer: C"


def test_usage_counts_only_the_generations_the_reply_was_made_of(tmp_path, embedder):
    """A competed query's competitors are scored for the router, not asked by the client: its
    usage counted them while its reply left them out."""
    settings = quiet_settings(tmp_path).model_copy(update={"learning": LearningSettings(competition_rate=1.0)})
    pool = small_pool([mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
                       mock_expert("gamma", "m2")])
    c = SkillRoute(settings, pool, embedder=embedder, factory=lambda spec: MockBackend(spec.key))
    with TestClient(create_app(c, owns_container=True)) as client:
        body = {"model": "auto", "messages": ASK, "k": 1, "mode": "topk", "seed": 1}
        r = client.post("/v1/chat/completions", json=body).json()
        streamed = events_of(client, {**body, "stream_options": {"include_usage": True}})[-1]["usage"]
        gens = client.get(f"/v1/queries/{r['skillroute']['query_id']}").json()["generations"]
    assert r["skillroute"]["competition"] and {g["role"] for g in gens} == {"expert", "competitor"}
    asked = [g for g in gens if g["role"] == "expert"]
    expected = {"prompt_tokens": sum(g["prompt_tokens"] for g in asked),
                "completion_tokens": sum(g["completion_tokens"] for g in asked)}
    assert {k: r["usage"][k] for k in expected} == expected == {k: streamed[k] for k in expected}


def test_a_stream_retried_after_its_query_failed_gets_the_plain_retry_s_error(tmp_path, embedder):
    """The retry of a failed streamed chat was a 200 stream whose one event was the error; a
    plain retry's 503 is what it gets now, with the same error."""
    broken: list[str] = []  # once the pool is profiled, every generation fails
    pool = small_pool([mock_expert("alpha", "m1"), mock_expert("gamma", "m2")])
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder,
                   factory=lambda spec: MockBackend(spec.key, fault=lambda r: next(iter(broken), None)))
    with TestClient(create_app(c, owns_container=True)) as client:
        broken.append("boom")
        body = {"model": "gamma", "messages": ASK, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body, headers={"Idempotency-Key": "k1"}) as first:
            assert first.status_code == 200 and '"error"' in first.read().decode()  # failed once streaming
        retried = client.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": "k1"})
        plain = client.post("/v1/chat/completions", json={**body, "stream": False}, headers={"Idempotency-Key": "k2"})
    assert retried.status_code == plain.status_code == 503 and retried.headers["content-type"] == "application/json"
    assert retried.json()["error"]["message"] == plain.json()["error"]["message"] == "every expert failed: gamma: boom"


def test_usage_counts_a_reply_shared_by_repeated_greedy_draws_once(tmp_path, embedder):
    """Three draws of one expert at temperature 0 run once (`executor.coalesce`), the reply
    stored under each draw: the chat's usage said three times the tokens that were processed."""
    backends: list[MockBackend] = []

    def factory(spec: BaseModelSpec) -> MockBackend:
        backends.append(MockBackend(spec.key))
        return backends[-1]

    pool = small_pool([mock_expert("alpha", "m1")]).model_copy(update={"aggregator": AggregatorConfig(mode="vote")})
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder, factory=factory)
    with TestClient(create_app(c, owns_container=True)) as client:
        asked = sum(b.generate_calls for b in backends)
        lettered = [{"role": "user", "content": "What is 12*12?\nA. 124\nB. 144\nC. 142\nD. 122"}]
        body = {"model": "auto", "messages": lettered, "k": 3, "mode": "sample", "seed": 0, "temperature": 0}
        r = client.post("/v1/chat/completions", json=body).json()
        gens = client.get(f"/v1/queries/{r['skillroute']['query_id']}").json()["generations"]
    assert r["skillroute"]["recruited"] == ["alpha"] * 3 and len(gens) == 3
    assert sum(b.generate_calls for b in backends) - asked == 1  # the three draws ran once
    assert r["usage"]["prompt_tokens"] == gens[0]["prompt_tokens"] > 0
    assert r["usage"]["completion_tokens"] == gens[0]["completion_tokens"] > 0
