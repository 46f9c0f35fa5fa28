"""The OpenAI shape, exactly: replies, stream chunks and model cards parse strictly as the
`openai` package's own types (generated from openai/openai-openapi), with no field of ours
beyond `skillroute`; max_tokens, temperature and stop reach the generations on every path."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from experts.mock import MockBackend
from experts.types import BaseModelSpec, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.store.repositories.queries import ask_of

ASK = [{"role": "user", "content": "What is 12*12?"}]
CHAT = "/v1/chat/completions"


def strictly(model: type[BaseModel], body: dict[str, Any], ours: set[str] = frozenset()) -> BaseModel:  # type: ignore[assignment]
    """Parse `body` as the OpenAI type, strictly, and check no object in it has a field the type
    lacks (the openai types accept extras silently), but for `ours` at the top."""
    parsed = model.model_validate(body, strict=True)
    assert set(parsed.model_extra or {}) == ours & set(body), parsed.model_extra
    _no_extras(parsed, top=True)
    return parsed


def _no_extras(value: object, top: bool = False) -> None:
    if isinstance(value, BaseModel):
        assert top or not value.model_extra, f"{type(value).__name__} has fields OpenAI's lacks: {value.model_extra}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name))
    elif isinstance(value, list):
        for item in value:
            _no_extras(item)


def sse(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", CHAT, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    return [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]


def requests_of(c: SkillRoute) -> list[GenerationRequest]:
    out = []
    for source in ("m1", "m2"):
        backend = c.fleet["cpu"].backend(BaseModelSpec(kind="mock", source=source))
        assert isinstance(backend, MockBackend)
        out += list(backend.requests)
        backend.requests.clear()
    return out


def test_a_completion_is_the_published_shape(client: TestClient) -> None:
    r = client.post(CHAT, json={"model": "auto", "messages": ASK, "seed": 2})
    body = r.json()
    strictly(ChatCompletion, body, {"skillroute"})
    assert set(body) == {"id", "object", "created", "model", "choices", "usage", "skillroute"}  # no null fingerprint
    (choice,) = body["choices"]
    assert choice.keys() == {"index", "message", "finish_reason", "logprobs"} and choice["logprobs"] is None
    assert choice["message"].keys() == {"role", "content", "refusal"} and choice["message"]["refusal"] is None
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_chunks_are_the_published_shape(client: TestClient, include_usage: bool) -> None:
    events = sse(client, {"model": "auto", "messages": ASK, "seed": 2,
                          "stream_options": {"include_usage": include_usage}})
    chunks = events[:-1] if include_usage else events
    for chunk in chunks:
        strictly(ChatCompletionChunk, chunk, {"skillroute"})
        assert chunk["choices"][0].keys() == {"index", "delta", "logprobs", "finish_reason"}
        assert chunk["choices"][0]["logprobs"] is None and ("usage" in chunk) == include_usage
        assert "system_fingerprint" not in chunk and chunk.get("usage") is None
    assert len({(c["id"], c["created"], c["model"]) for c in events}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    reasons = [c["choices"][0]["finish_reason"] for c in chunks]
    assert reasons[:-1] == [None] * (len(chunks) - 1) and reasons[-1] == "stop"  # null until the end
    assert chunks[-1]["choices"][0]["delta"] == {} and "skillroute" in chunks[-1]
    assert all("skillroute" not in c for c in chunks[:-1])
    if include_usage:
        last = strictly(ChatCompletionChunk, events[-1])
        assert events[-1]["choices"] == [] and last.usage is not None and last.usage.total_tokens > 0  # type: ignore[attr-defined]


def test_models_are_the_published_shape(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert listed.keys() == {"object", "data"} and listed["object"] == "list"
    for card in listed["data"]:
        strictly(Model, card)
        assert card.keys() == {"id", "object", "created", "owned_by"}
    strictly(Model, client.get("/v1/models/auto").json())


def test_max_tokens_and_stop_change_what_the_official_client_gets(client: TestClient, container: SkillRoute) -> None:
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    full = oai.chat.completions.create(model="gamma", messages=ASK)  # type: ignore[arg-type]
    cut = oai.chat.completions.create(model="gamma", messages=ASK, max_tokens=1)  # type: ignore[arg-type]
    newer = oai.chat.completions.create(model="gamma", messages=ASK, max_completion_tokens=2)  # type: ignore[arg-type]
    stopped = oai.chat.completions.create(model="gamma", messages=ASK, stop="(")  # type: ignore[arg-type]
    text = full.choices[0].message.content or ""
    assert len(text.split()) == 3 and full.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text.split()[0] + " " and cut.choices[0].finish_reason == "length"
    assert newer.choices[0].message.content == " ".join(text.split()[:2]) + " " and newer.usage.completion_tokens == 2  # type: ignore[union-attr]
    assert stopped.choices[0].message.content == text[:text.index("(")]
    chunks = list(oai.chat.completions.create(model="gamma", messages=ASK, max_tokens=1, stream=True))  # type: ignore[arg-type]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut.choices[0].message.content


def test_temperature_max_tokens_and_stop_reach_every_routed_generation(client: TestClient,
                                                                       container: SkillRoute) -> None:
    requests_of(container)
    greedy = client.post(CHAT, json={"model": "auto", "messages": ASK, "seed": 3, "k": 3}).json()
    assert all(r.sampling.temperature == 0.0 for r in requests_of(container))
    body = {"model": "auto", "messages": ASK, "seed": 3, "k": 3, "temperature": 0.9, "max_tokens": 3, "stop": [")"]}
    sampled = client.post(CHAT, json=body).json()
    sent = requests_of(container)
    assert {r.request_id.split(":")[1] for r in sent} == {"0", "1", "2", "agg"}  # each draw and the aggregator
    assert all((r.sampling.temperature, r.sampling.max_tokens, r.sampling.stop) == (0.9, 3, [")"]) for r in sent)
    assert sampled["choices"][0]["message"]["content"] != greedy["choices"][0]["message"]["content"]
    stored = container.queries.get(sampled["skillroute"]["query_id"])
    ask = ask_of(stored)  # stored with the query, so a recovery asks it the same way
    assert (ask.temperature, ask.max_tokens, ask.stop, ask.stream_to) == (0.9, 3, (")",), None)
    assert all(g.completion_tokens <= 3 and ")" not in g.text for g in stored.generations)


def test_a_named_expert_asked_without_a_seed_samples_afresh_each_time(client: TestClient,
                                                                     container: SkillRoute) -> None:
    """The named path took seed 0 for an unset seed: every `temperature > 0` reply was the same
    text, stored as if the client had pinned seed 0. Unset, a seed is drawn, as `auto` draws one."""
    requests_of(container)
    replies = [client.post(CHAT, json={"model": "gamma", "messages": ASK, "temperature": 0.9}).json()
               for _ in range(3)]
    seeds = {r["skillroute"]["seed"] for r in replies}
    assert len(seeds) == 3 and len({r.sampling.seed for r in requests_of(container)}) == 3
    pinned = [client.post(CHAT, json={"model": "gamma", "messages": ASK, "temperature": 0.9, "seed": 5}).json()
              for _ in range(2)]
    assert pinned[0]["choices"] == pinned[1]["choices"] and pinned[0]["skillroute"]["seed"] == 5


def test_any_64_bit_seed_is_taken_folded_into_the_backends_range(client: TestClient) -> None:
    """OpenAI takes any int64 seed and clients send 64-bit random ones: a 400 for -1 or 2**40."""
    replies = {s: client.post(CHAT, json={"model": "auto", "messages": ASK, "seed": s}).json() for s in
               (-1, 2**31 - 1, 2**40 + 7, 7)}
    assert [r["skillroute"]["seed"] for r in replies.values()] == [2**31 - 1, 2**31 - 1, 7, 7]
    assert replies[2**40 + 7]["choices"] == replies[7]["choices"]  # a folded seed still reproduces


def test_an_assistant_turn_s_refusal_part_is_read_as_its_text(client: TestClient, container: SkillRoute) -> None:
    """OpenAI replays an assistant's refusal as a `refusal` part: a conversation holding one was a 400."""
    turns = [*ASK, {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot say."}]},
             {"role": "user", "content": "Then say 2 + 2."}]
    r = client.post(CHAT, json={"model": "auto", "messages": turns, "seed": 1})
    assert r.status_code == 200, r.text
    assert "Assistant: I cannot say." in container.queries.get(r.json()["skillroute"]["query_id"]).text


def test_bad_sampling_asks_are_400_naming_the_field(client: TestClient) -> None:
    cases = [({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": [""]}, "stop"), ({"max_tokens": 0}, "max_tokens"),
             ({"temperature": 2.5}, "temperature"), ({"max_completion_tokens": -1}, "max_completion_tokens"),
             ({"presence_penalty": 3}, "presence_penalty"), ({"frequency_penalty": -5}, "frequency_penalty"),
             ({"seed": 2**63}, "seed")]
    for extra, field in cases:
        r = client.post(CHAT, json={"model": "auto", "messages": ASK, **extra})
        assert r.status_code == 400 and field in r.json()["error"]["message"], (extra, r.text)
        assert r.json()["error"]["param"] == field, r.text
    assert container_has_no_queries(client)


def container_has_no_queries(client: TestClient) -> bool:
    return client.get("/v1/queries/1").status_code == 404  # nothing refused was stored


TOOLS = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object", "properties": {}}}}]


class Value(BaseModel):
    value: int


def test_parameters_no_expert_honours_are_refused_naming_them(client: TestClient) -> None:
    """Tool calls, JSON output and log probabilities were ignored: a 200 of prose the client
    could not use as it asked (parse() failed on it, no tool call came). They are a 400 naming
    the parameter, and nothing is stored; their settings that ask for nothing still pass."""
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"tools": TOOLS}, "tools", "unsupported_parameter"),
        ({"tools": TOOLS, "tool_choice": "auto"}, "tools", "unsupported_parameter"),
        ({"tool_choice": "required"}, "tool_choice", "unsupported_value"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "calc"}}}, "tool_choice",
         "unsupported_value"),
        ({"extra_body": {"functions": [TOOLS[0]["function"]]}}, "functions", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities",
         "unsupported_value"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter")]
    for extra, param, code in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            oai.chat.completions.create(model="auto", messages=ASK, **extra)  # type: ignore[call-overload]
        assert (refused.value.param, refused.value.code, refused.value.type) == (param, code, "invalid_request_error")
    with pytest.raises(openai.BadRequestError) as parsed:
        oai.chat.completions.parse(model="gamma", messages=ASK, response_format=Value)  # type: ignore[arg-type]
    assert parsed.value.param == "response_format"
    assert container_has_no_queries(client)
    harmless: list[dict[str, Any]] = [  # their settings that ask for nothing are taken
        {"tools": TOOLS, "tool_choice": "none"}, {"tool_choice": "auto"}, {"response_format": {"type": "text"}},
        {"logprobs": False, "top_logprobs": 0}, {"user": "u1", "top_p": 0.5, "presence_penalty": 0.1},
        {"modalities": ["text"]}]
    for extra in harmless:
        done = oai.chat.completions.create(model="gamma", messages=ASK, **extra)  # type: ignore[call-overload]
        assert done.choices[0].message.content and done.choices[0].message.tool_calls is None, extra


def test_null_stream_and_n_are_their_defaults(client: TestClient) -> None:
    """OpenAI's schema marks `stream` and `n` nullable (default false, 1): null was a 422."""
    r = client.post(CHAT, json={"model": "gamma", "messages": ASK, "stream": None, "n": None})
    assert r.status_code == 200, r.text
    strictly(ChatCompletion, r.json(), {"skillroute"})


def test_asks_that_would_do_nothing_here_are_400_naming_them(client: TestClient) -> None:
    """stream_options without a stream, and k or mode for a named expert (it answers alone), were
    taken and ignored; OpenAI and vLLM refuse the first, and latency_ms was refused for the second."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "auto", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": "gamma", "k": 2}, "k"), ({"model": "gamma", "mode": "sample"}, "mode"),
        ({"model": "gamma", "latency_ms": 1000}, "latency_ms")]
    for extra, param in cases:  # with OpenAI's code for a parameter not done, as the README says
        r = client.post(CHAT, json={"messages": ASK, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)
        assert r.json()["error"]["code"] == "unsupported_parameter", (extra, r.text)
    assert container_has_no_queries(client)
    streamed = client.post(CHAT, json={"model": "auto", "messages": ASK, "stream": True,
                                       "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200
