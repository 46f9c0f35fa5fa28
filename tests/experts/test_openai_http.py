"""OpenAIHTTPBackend against a real OpenAI-compatible server on 127.0.0.1 (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from experts.backend import BackendError, ExpertBackend, ModelSourceError
from experts.factory import make_backend
from experts.openai_http import OpenAIHTTPBackend
from experts.options import BackendOptions
from experts.types import BaseModelSpec, ChatMessage, Generation, GenerationRequest, SamplingParams

SERVED = ["tiny-chat", "other-model"]
SLOW_S = 2.0  # how long the server takes over a SLOW request (past the tests' timeouts)


@dataclass
class Recorder:
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    gather: int = 1  # a handler holds its reply until this many requests have been in flight at once …
    gather_timeout_s: float = 2.0  # … or this long has passed


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    """The last message echoed, a word a token: cut at max_tokens ("length") as a server cuts it."""
    prompt = " ".join(m["content"] for m in body["messages"])
    words = re.findall(r"\S+\s*", f"echo: {body['messages'][-1]['content']}")
    limit = body.get("max_tokens") or len(words)
    text, finish = "".join(words[:limit]), "length" if len(words) > limit else "stop"
    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
    message = {"role": "assistant", "content": text}
    return {"object": "chat.completion", "model": body["model"], "usage": usage,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def _events(body: dict[str, Any]) -> Iterator[str]:
    """The completion as OpenAI's stream: a role chunk, a chunk a word, the finish, the usage."""
    done = _completion(body)
    words = re.findall(r"\S+\s*", done["choices"][0]["message"]["content"])
    deltas = [{"role": "assistant", "content": ""}, *({"content": w} for w in words), {}]
    for i, delta in enumerate(deltas):
        finish = done["choices"][0]["finish_reason"] if i == len(deltas) - 1 else None
        yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]})}\n\n"
    if (body.get("stream_options") or {}).get("include_usage"):
        yield f"data: {json.dumps({'choices': [], 'usage': done['usage']})}\n\n"
    yield "data: [DONE]\n\n"


def _dropped_events(body: dict[str, Any]) -> Iterator[str]:
    """The stream cut part way, as a dying server or proxy cuts it: no finish_reason, no [DONE]."""
    return (e for e in list(_events(body))[:3])


async def _trickled(head: str, times: int, rest: str) -> Any:
    """`head` every SLOW_S / 20 seconds, `times` times, then `rest`: a server that keeps the
    connection busy (a slow body, SSE keep-alive comments) without ever pausing for long."""
    for _ in range(times):
        yield head
        await asyncio.sleep(SLOW_S / 20)
    yield rest


async def _slow_events(body: dict[str, Any]) -> Any:
    """The stream, a piece every SLOW_S / 4 seconds."""
    for event in _events(body):
        await asyncio.sleep(SLOW_S / 4)
        yield event


def make_app(rec: Recorder) -> FastAPI:
    app = FastAPI()

    @app.get("/health")  # what `tests.live_server` polls for readiness
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in SERVED]}

    @app.get("/broken/v1/models")
    async def broken() -> JSONResponse:
        return JSONResponse({"error": "loading"}, status_code=503)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        rec.bodies.append(body)
        rec.auth.append(request.headers.get("authorization"))
        rec.in_flight += 1
        rec.max_in_flight = max(rec.max_in_flight, rec.in_flight)
        deadline = time.monotonic() + rec.gather_timeout_s
        # the most at once, not how many now: the first reply to go left the others waiting it out
        while rec.max_in_flight < rec.gather and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        rec.in_flight -= 1
        if body["messages"][-1]["content"] == "FAIL":
            return JSONResponse({"error": "boom"}, status_code=500)
        if body["messages"][-1]["content"] == "SLOW":
            await asyncio.sleep(SLOW_S)
        text = body["messages"][-1]["content"]
        if text == "TRICKLE":  # 30 pieces, 3 s in all
            rest = "".join(_events(body)) if body.get("stream") else json.dumps(_completion(body))
            head = ": keep-alive\n\n" if body.get("stream") else " "
            kind = "text/event-stream" if body.get("stream") else "application/json"
            return StreamingResponse(_trickled(head, 30, rest), media_type=kind)
        if body.get("stream"):
            events = (_slow_events(body) if "DRIP" in text
                      else _dropped_events(body) if "DROP" in text else _events(body))
            return StreamingResponse(events, media_type="text/event-stream")
        return _completion(body)

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()
    config = uvicorn.Config(make_app(rec), host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:  # poll for readiness; port 0 means the OS picked a free port
        assert thread.is_alive() and time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", rec
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def base(server: tuple[str, Recorder]) -> str:
    return server[0] + "/v1"


@pytest.fixture
def rec(server: tuple[str, Recorder]) -> Recorder:
    recorder = server[1]
    recorder.__init__()  # type: ignore[misc]  # a fresh record for each test, same object
    return recorder


def backend(base: str, model: str | None = "tiny-chat", **kw: Any) -> OpenAIHTTPBackend:
    return OpenAIHTTPBackend(BaseModelSpec(kind="openai", source=base, model=model), **kw)


def req(i: int, text: str, **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"r{i}",
        messages=[ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content=text)],
        sampling=SamplingParams(**sampling),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_factory_builds_it_and_it_is_an_expert_backend(base: str) -> None:
    b = make_backend(BaseModelSpec(kind="openai", source=base, model="tiny-chat"))
    assert isinstance(b, OpenAIHTTPBackend) and isinstance(b, ExpertBackend)
    assert b.memory_bytes() == 0


def test_batch_runs_concurrently_and_keeps_order(base: str, rec: Recorder) -> None:
    # Replies wait until 4 are in flight (or 10 s): one-by-one sending would see only 1.
    rec.gather, rec.gather_timeout_s = 4, 10.0
    b = backend(base)
    b.load()
    out = b.generate([req(i, f"question {i}") for i in range(4)])
    assert rec.max_in_flight == 4
    assert [g.request_id for g in out] == ["r0", "r1", "r2", "r3"]
    assert [g.text for g in out] == [f"echo: question {i}" for i in range(4)]
    assert out[0].prompt_tokens == 4 and out[0].completion_tokens == 3 and out[0].latency_s > 0


def test_concurrency_is_bounded(base: str, rec: Recorder) -> None:
    rec.gather, rec.gather_timeout_s = 3, 0.3
    b = backend(base, max_concurrency=2)
    b.load()
    assert len(b.generate([req(i, "q") for i in range(6)])) == 6
    assert rec.max_in_flight == 2


def test_sampling_is_forwarded(base: str, rec: Recorder) -> None:
    b = backend(base)
    b.load()
    b.generate([req(0, "hi", temperature=0.7, top_p=0.9, max_tokens=17, seed=5, stop=["\n"])])
    body = rec.bodies[0]
    assert body["model"] == "tiny-chat"
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.9, 17)
    assert (body["seed"], body["stop"]) == (5, ["\n"])


def test_the_api_key_given_is_sent_and_the_environment_is_not_read(
    base: str, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")  # the service's settings read it, not the backend
    for b in (backend(base, api_key="sk-arg"), make_backend(BaseModelSpec(kind="openai", source=base),
                                                            BackendOptions(openai_api_key="sk-opt")), backend(base)):
        b.load()
        b.generate([req(0, "hi")])
    assert rec.auth == ["Bearer sk-arg", "Bearer sk-opt", None]


def test_load_is_bookkeeping_counted_once(base: str) -> None:
    b = backend(base)
    with pytest.raises(BackendError, match="before load"):
        b.generate([req(0, "hi")])
    b.load()
    b.load()
    assert (b.is_loaded, b.loads) == (True, 1)
    b.unload()
    assert not b.is_loaded
    b.load()
    assert b.loads == 2


def test_model_defaults_to_the_first_served(base: str) -> None:
    b = backend(base, model=None)
    b.validate()
    assert b.model == "tiny-chat"


def test_model_not_served(base: str) -> None:
    with pytest.raises(ModelSourceError, match="does not serve 'llama-70b'; it serves tiny-chat, other-model"):
        backend(base, model="llama-70b").validate()


def test_unreachable_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    b = backend(url)
    with pytest.raises(ModelSourceError, match=f"cannot reach {url}/models: "):
        b.load()
    assert (b.is_loaded, b.loads) == (False, 0)


def test_server_answering_an_error_status(server: tuple[str, Recorder]) -> None:
    with pytest.raises(ModelSourceError, match="cannot reach .*/broken/v1/models: HTTP 503"):
        backend(server[0] + "/broken/v1").validate()


def test_a_request_the_server_refuses_fails_alone_naming_it(base: str) -> None:
    b = backend(base)
    b.load()
    fine, failed, also = b.generate([req(0, "fine"), req(1, "FAIL"), req(2, "also fine")])
    assert fine.error is None and also.error is None and also.text == "echo: also fine"
    assert failed.text == "" and failed.error is not None and "HTTP 500 to request r1" in failed.error


def test_a_request_past_its_timeout_fails_alone(base: str) -> None:
    b = backend(base)
    b.load()
    slow, fine = b.generate([req(0, "SLOW").model_copy(update={"timeout_s": 0.3}), req(1, "fine")])
    assert slow.error == "timed out after 0.3 s" and fine.error is None
    assert 0.3 <= slow.latency_s < SLOW_S


def test_a_stream_past_its_timeout_ends_in_its_timeout(base: str) -> None:
    b = backend(base)
    b.load()
    *pieces, reply = b.stream(req(0, "DRIP DRIP DRIP DRIP DRIP").model_copy(update={"timeout_s": SLOW_S}))
    assert isinstance(reply, Generation) and reply.error == f"timed out after {SLOW_S:g} s"
    assert 0 < len(pieces) < 5  # some pieces came, the stream was cut before the rest


@pytest.mark.parametrize("streamed", [False, True])
def test_a_request_s_timeout_bounds_its_whole_reply_however_the_server_trickles(base: str, streamed: bool) -> None:
    """A body sent a byte at a time, or a stream of keep-alive comments: each read comes well
    within the timeout, and the reply still ends at the request's timeout, not the server's end."""
    b = backend(base)
    b.load()
    request = req(0, "TRICKLE").model_copy(update={"timeout_s": 0.5})
    reply = list(b.stream(request))[-1] if streamed else b.generate([request])[0]
    assert isinstance(reply, Generation) and reply.error == "timed out after 0.5 s"
    assert 0.5 <= reply.latency_s < SLOW_S / 2  # the server takes 3 s over it


def test_a_server_that_cannot_be_reached_fails_the_batch() -> None:
    b = backend(f"http://127.0.0.1:{free_port()}/v1")
    b._client = httpx.Client()  # as if loaded while the server was up
    with pytest.raises(BackendError, match="request r0"):
        b.generate([req(0, "fine")])


def test_stream_hands_on_the_servers_pieces_and_its_usage(base: str, rec: Recorder) -> None:
    b = backend(base)
    b.load()
    events = list(b.stream(req(0, "tell me more")))
    pieces, last = events[:-1], events[-1]
    assert pieces == ["echo: ", "tell ", "me ", "more"] and rec.bodies[-1]["stream"] is True
    assert isinstance(last, Generation) and last.text == "echo: tell me more"
    assert last.text == b.generate([req(0, "tell me more")])[0].text
    assert (last.prompt_tokens, last.completion_tokens) == (5, 4)  # the server's usage chunk


def test_a_stream_the_server_refuses_ends_as_generate_fails(base: str) -> None:
    b = backend(base)
    b.load()
    (streamed,) = list(b.stream(req(1, "FAIL")))
    (plain,) = b.generate([req(1, "FAIL")])
    assert isinstance(streamed, Generation) and streamed.text == ""
    assert streamed.error == plain.error and plain.error is not None and "HTTP 500 to request r1" in plain.error


def test_a_stream_cut_before_its_end_is_a_failure_not_a_short_answer(base: str) -> None:
    b = backend(base)
    b.load()
    *pieces, last = b.stream(req(0, "DROP it here"))
    assert pieces == ["echo: ", "DROP "]  # what came is handed on
    assert isinstance(last, Generation) and last.text == ""
    assert last.error == "stream ended before the reply was complete"


def test_a_request_past_the_backends_read_timeout_fails_alone(base: str) -> None:
    """No timeout_s of its own: the backend's read timeout fails it, and the batch keeps the rest."""
    b = backend(base, timeout_s=0.5)
    b.load()
    fine, slow, also = b.generate([req(0, "fine"), req(1, "SLOW"), req(2, "also fine")])
    assert (fine.text, also.text) == ("echo: fine", "echo: also fine") and fine.error is None is also.error
    assert slow.text == "" and slow.error is not None and "request r1" in slow.error


def test_a_request_whose_connection_fails_fails_alone_and_all_unreached_is_an_error() -> None:
    """A request the server dropped, or one that could not connect, is that request's failure;
    only a batch none of which reached the server (the server down) raises."""
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        text = body["messages"][-1]["content"]
        if text == "DROP":
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        if text == "REFUSED":
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json=_completion(body))

    b = backend("http://test/v1")
    b._client = httpx.Client(transport=httpx.MockTransport(answer))  # as if loaded
    out = b.generate([req(0, "fine"), req(1, "DROP"), req(2, "REFUSED"), req(3, "also fine")])
    assert [g.text for g in out] == ["echo: fine", "", "", "echo: also fine"]
    assert "request r1: peer closed" in str(out[1].error) and "request r2: connection refused" in str(out[2].error)
    with pytest.raises(BackendError, match="request r.: connection refused"):
        b.generate([req(0, "REFUSED"), req(1, "REFUSED")])


def test_the_server_s_finish_reason_is_the_reply_s_streamed_or_not(base: str) -> None:
    """"length" where the server's max_tokens cut the reply, "stop" where it ended on its own."""
    b = backend(base)
    b.load()
    asked = [req(0, "tell me more"), req(1, "tell me more", max_tokens=2)]
    plain = [(g.text, g.finish_reason) for g in b.generate(asked)]
    assert plain == [("echo: tell me more", "stop"), ("echo: tell ", "length")]
    streamed = [list(b.stream(r))[-1] for r in asked]
    assert [(g.text, g.finish_reason) for g in streamed if isinstance(g, Generation)] == plain
