"""OpenAIHTTPBackend reading what a server answers: replies that are malformed in any way fail
their own request only, and a reply's token counts follow one rule, streamed or not."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from experts.openai_http import OpenAIHTTPBackend
from experts.types import BaseModelSpec, ChatMessage, Generation, GenerationRequest

GOOD = {"choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
# 200 replies a server (or a proxy in front of it) might send that are not a chat completion
MALFORMED: dict[str, Any] = {
    "null_message": {"choices": [{"message": None, "finish_reason": "stop"}]},
    "bad_usage": {**GOOD, "usage": {"prompt_tokens": "n/a"}},
    "list_content": {"choices": [{"message": {"content": [{"type": "text", "text": "hi"}]},
                                  "finish_reason": "stop"}]},
    "list_choices_entry": {"choices": ["hello"]},
    "not_an_object": ["hello"],
}


def answer(request: httpx.Request) -> httpx.Response:
    """The reply the last user message names: one of MALFORMED, else GOOD."""
    mode = json.loads(request.content)["messages"][-1]["content"]
    return httpx.Response(200, json=MALFORMED.get(mode, GOOD))


def loaded(handler: Any = answer) -> OpenAIHTTPBackend:
    b = OpenAIHTTPBackend(BaseModelSpec(kind="openai", source="http://test/v1", model="m"))
    b._client = httpx.Client(transport=httpx.MockTransport(handler))  # as if loaded
    return b


def req(rid: str, text: str) -> GenerationRequest:
    return GenerationRequest(request_id=rid, messages=[ChatMessage(role="user", content=text)])


@pytest.mark.parametrize("mode", sorted(MALFORMED))
def test_a_malformed_reply_fails_its_own_request_and_the_batch_keeps_the_rest(mode: str) -> None:
    good, bad = loaded().generate([req("good", "ok"), req("bad", mode)])
    assert (good.text, good.error) == ("hello", None)
    assert bad.text == "" and bad.error is not None and "request bad" in bad.error


def test_an_unexpected_failure_reading_a_reply_is_that_request_s_alone() -> None:
    """Whatever goes wrong with one request (here a bug-like error in the transport), the batch's
    other answers are kept: only an unreachable server fails the batch."""
    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["messages"][-1]["content"] == "boom":
            raise RuntimeError("something nobody expected")
        return answer(request)

    good, bad = loaded(handler).generate([req("good", "ok"), req("bad", "boom")])
    assert good.text == "hello" and isinstance(bad, Generation)
    assert bad.error is not None and "something nobody expected" in bad.error


def sse(*chunks: object) -> httpx.Response:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("chunk", [["hello"], {"choices": [], "usage": {"prompt_tokens": "n/a"}}])
def test_a_malformed_stream_chunk_ends_the_stream_in_its_failure(chunk: object) -> None:
    start = {"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]}
    *_, last = loaded(lambda request: sse(start, chunk)).stream(req("s", "ok"))
    assert isinstance(last, Generation) and last.text == ""
    assert last.error is not None and "request s" in last.error


def test_without_the_server_s_usage_both_paths_count_a_reply_alike() -> None:
    """A server that sends no usage: the reply's tokens are estimated from its text by one rule
    (experts.cost_model's, ~4/3 a word), streamed or not, however the server split its stream."""
    plain = {"choices": [{"message": {"content": "a b c d"}, "finish_reason": "stop"}]}
    pieces = [{"choices": [{"delta": {"content": p}, "finish_reason": None}]} for p in ("a b", " c", " d")]
    done = {"choices": [{"delta": {}, "finish_reason": "stop"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        return sse(*pieces, done) if json.loads(request.content).get("stream") else httpx.Response(200, json=plain)

    b = loaded(handler)
    (got,) = b.generate([req("r", "one two three")])
    *_, streamed = b.stream(req("r", "one two three"))
    assert isinstance(streamed, Generation) and streamed.text == got.text == "a b c d"
    assert (got.prompt_tokens, got.completion_tokens) == (4, 5) == (streamed.prompt_tokens, streamed.completion_tokens)
