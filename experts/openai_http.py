"""Any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, a hosted API) as a backend.

The server holds the weights, so load/unload are bookkeeping: `load` checks the server answers
and serves the model, and `loads` counts the times the backend went from unloaded to loaded
(what the scheduler's load-once promise is tested against). A batch is sent as concurrent
requests, bounded by `max_concurrency`, because such servers batch in-flight requests
themselves (continuous batching): sending them one by one would waste the server.

One request's failure (an error status, a timeout, a dropped connection, a malformed reply) is
that request's failed Generation; the batch's other answers are kept. Only a server that no
request of the batch could reach (refused or timed-out connections) raises BackendError: that
is the backend down, not a query's fault, and the device worker fails the batch with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from experts.backend import BackendError, ModelSourceError
from experts.cost_model import approx_prompt_tokens, approx_tokens
from experts.types import BaseModelSpec, Generation, GenerationRequest, StreamEvent, finish_reason_of


def _reason(exc: httpx.HTTPError) -> str:
    return str(exc) or type(exc).__name__


# The server was not reached at all: nothing about this request made it fail.
UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)


class OpenAIHTTPBackend:
    """ExpertBackend over HTTP. `spec.source` is the base URL (…/v1), `spec.model` the served
    model (if unset, the first one the server lists). `api_key` is sent as a bearer token when
    given (the service passes its `backends.openai_api_key` setting)."""

    def __init__(
        self,
        spec: BaseModelSpec,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 5.0,
    ):
        self.spec = spec
        self.base_model_key = spec.key
        self.loads = 0
        self.base_url = spec.source.rstrip("/")
        self.model: str | None = spec.model
        self.max_concurrency = max(1, max_concurrency)
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._connect_timeout_s = connect_timeout_s
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def is_loaded(self) -> bool:
        return self._client is not None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def validate(self) -> None:
        """GET /models with a short timeout; the server must answer 200 and list our model."""
        url = f"{self.base_url}/models"
        try:
            reply = httpx.get(url, headers=self._headers(), timeout=self._connect_timeout_s)
        except httpx.HTTPError as exc:
            raise ModelSourceError(f"cannot reach {url}: {_reason(exc)}") from exc
        if reply.status_code != 200:
            raise ModelSourceError(f"cannot reach {url}: HTTP {reply.status_code}")
        self._check_model(url, _served_models(url, reply))

    def _check_model(self, url: str, served: list[str]) -> None:
        if self.model is None:
            if not served:
                raise ModelSourceError(f"{url} lists no models")
            self.model = served[0]
        elif self.model not in served:
            raise ModelSourceError(
                f"{url} does not serve {self.model!r}; it serves {', '.join(served) or 'nothing'}"
            )

    def load(self) -> None:
        with self._lock:
            if self._client is not None:
                return
            self.validate()
            limits = httpx.Limits(max_connections=self.max_concurrency)
            self._client = httpx.Client(timeout=self._timeout, limits=limits, headers=self._headers())
            self.loads += 1

    def unload(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            if client is not None:
                client.close()

    def memory_bytes(self) -> int:
        """Nothing resident here: the weights live in the server's memory."""
        return 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        client = self._client
        if client is None:
            raise BackendError(f"{self.base_model_key}: generate() before load()")
        if len(requests) <= 1:
            tries = [self._attempt(client, r) for r in requests]
        else:
            workers = min(self.max_concurrency, len(requests))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-http") as pool:
                tries = list(pool.map(lambda r: self._attempt(client, r), requests))
        unreached = [exc for _, exc in tries if exc is not None]
        if unreached and len(unreached) == len(tries):
            raise unreached[0]  # the server is down: a backend failure, not these queries'
        return [gen for gen, _ in tries]

    def _attempt(self, client: httpx.Client, request: GenerationRequest) -> tuple[Generation, BackendError | None]:
        """The request's Generation, and the error if the server could not be reached for it.
        Anything else that goes wrong is this request's failure: raised, it would fail every
        request of the batch (the pool's map re-raises it), which the module doc rules out."""
        try:
            return self._one(client, request), None
        except BackendError as exc:
            return Generation.failed(request.request_id, str(exc)), exc
        except Exception as exc:  # noqa: BLE001  # one request's, whatever it is
            reason = f"request {request.request_id}: {type(exc).__name__}: {exc}"
            return Generation.failed(request.request_id, reason[:500]), None

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m.model_dump() for m in request.messages],
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = s.stop
        return body

    def _one(self, client: httpx.Client, request: GenerationRequest) -> Generation:
        """The reply, or this request's own failure: the server refusing it (an error status, a
        prompt past its context), it running past its `timeout_s` or the backend's read timeout,
        or its connection failing part way fails it alone, not the other requests of the batch.
        A server that cannot be reached raises BackendError (see `generate`)."""
        url, rid, started = f"{self.base_url}/chat/completions", request.request_id, time.perf_counter()
        try:
            status, body = self._exchange(client, request, _deadline(request, started))
        except UNREACHABLE as exc:
            raise BackendError(f"{url} request {rid}: {_reason(exc)}") from exc
        except httpx.HTTPError as exc:
            return self._transport_failure(request, exc, time.perf_counter() - started)
        latency_s = time.perf_counter() - started
        if status != 200:
            return Generation.failed(rid, _refusal(url, rid, status, body.decode(errors="replace")), latency_s)
        try:
            return _to_generation(request, body, latency_s)
        except BackendError as exc:  # a malformed reply is this request's
            return Generation.failed(rid, str(exc), latency_s)

    def _exchange(self, client: httpx.Client, request: GenerationRequest, deadline: float | None) -> tuple[int, bytes]:
        """The reply's status and body, read by the request's deadline (see `_read_by`)."""
        url = f"{self.base_url}/chat/completions"
        with (client.stream("POST", url, json=self._body(request), timeout=self._timeout_of(request)) as reply,
              _cut_at(reply, deadline)):
            return reply.status_code, _read_by(reply, deadline)

    def _transport_failure(self, request: GenerationRequest, exc: httpx.HTTPError, latency_s: float) -> Generation:
        """A request's failure on the wire: its own timeout worded as every backend words it. Past
        its deadline, whatever the cut connection raised (see `_cut_at`) is that timeout."""
        timeout_s = request.timeout_s
        timed_out = isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout)
        if timeout_s is not None and (timed_out or latency_s >= timeout_s):
            return Generation.timed_out(request, latency_s)
        url = f"{self.base_url}/chat/completions"
        return Generation.failed(request.request_id, f"{url} request {request.request_id}: {_reason(exc)}", latency_s)

    def _timeout_of(self, request: GenerationRequest) -> httpx.Timeout:
        """The request's own `timeout_s` as httpx's wait for each read: that bounds the wait for
        the reply's headers; from the headers on, its deadline bounds the whole reply."""
        if request.timeout_s is None:
            return self._timeout
        return httpx.Timeout(request.timeout_s, connect=self._connect_timeout_s)

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        """The server's own stream of the reply (`stream: true`), each piece as it arrives, then
        the reply with the usage the server sends last (`stream_options.include_usage`). Past the
        request's `timeout_s` the stream is closed (the server stops) and the reply is its timeout;
        any other failure ends it in the failed Generation `generate` would give."""
        client = self._client
        if client is None:
            raise BackendError(f"{self.base_model_key}: generate() before load()")
        url, rid, started = f"{self.base_url}/chat/completions", request.request_id, time.perf_counter()
        body = {**self._body(request), "stream": True, "stream_options": {"include_usage": True}}
        streamed = _Streamed()
        try:
            with (client.stream("POST", url, json=body, timeout=self._timeout_of(request)) as reply,
                  _cut_at(reply, _deadline(request, started))):
                if reply.status_code != 200:
                    text = _read_by(reply, _deadline(request, started)).decode(errors="replace")
                    refusal = _refusal(url, rid, reply.status_code, text)
                    yield Generation.failed(rid, refusal, time.perf_counter() - started)
                    return
                yield from _relay(reply, request, started, streamed)
        except UNREACHABLE as exc:
            raise BackendError(f"{url} request {rid}: {_reason(exc)}") from exc
        except httpx.HTTPError as exc:
            yield self._transport_failure(request, exc, time.perf_counter() - started)
            return
        except BackendError as exc:  # a malformed or failed chunk is this request's
            yield Generation.failed(rid, str(exc), time.perf_counter() - started)
            return
        yield streamed.reply(request, time.perf_counter() - started)


def _refusal(url: str, request_id: str, status: int, text: str) -> str:
    return f"{url} answered HTTP {status} to request {request_id}: {text[:300]}"


@dataclass
class _Streamed:
    """What a stream has brought so far."""

    pieces: list[str] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    finish: object = None  # the server's, on the chunk that ends the choice
    done: bool = False  # `data: [DONE]` came

    def reply(self, request: GenerationRequest, latency_s: float) -> Generation:
        """The whole reply; a stream cut with neither a finish_reason nor [DONE] (the server or
        a proxy dropped it) is a failure, not a shorter answer."""
        request_id, text = request.request_id, "".join(self.pieces)
        if self.finish is None and not self.done:
            return Generation.failed(request_id, "stream ended before the reply was complete", latency_s)
        try:
            prompt, completion = _counts(request, text, self.usage)
            return Generation(request_id=request_id, text=text, prompt_tokens=prompt, completion_tokens=completion,
                              latency_s=latency_s, finish_reason=finish_reason_of(self.finish))
        except (ValueError, TypeError, AttributeError):  # usage that is not numbers: a malformed reply
            malformed = f"request {request_id}: malformed usage {self.usage!r:.300}"
            return Generation.failed(request_id, malformed, latency_s)


def _relay(reply: httpx.Response, request: GenerationRequest, started: float, streamed: _Streamed) -> Iterator[str]:
    """The stream's text pieces as they arrive, noting its usage, finish and end in `streamed`."""
    for chunk in _sse_chunks(reply, request.request_id, streamed, _deadline(request, started)):
        streamed.usage = chunk.get("usage") or streamed.usage
        streamed.finish = _finish_of(chunk) or streamed.finish
        for piece in _delta_texts(chunk):
            streamed.pieces.append(piece)
            yield piece


def _sse_chunks(
    reply: httpx.Response, request_id: str, streamed: _Streamed, deadline: float | None
) -> Iterator[dict[str, Any]]:
    """The JSON chunks of a server-sent event stream, up to `data: [DONE]` (noted in `streamed`).
    The deadline is checked on every line, comments (`: keep-alive`) and blank lines too."""
    for line in reply.iter_lines():
        _check(deadline)
        data = line.removeprefix("data:").strip() if line.startswith("data:") else None
        if data == "[DONE]":
            streamed.done = True
            return
        if data:
            try:
                chunk = json.loads(data)
            except ValueError as exc:
                raise BackendError(f"request {request_id}: not a stream chunk: {data[:300]}") from exc
            if not isinstance(chunk, dict):
                raise BackendError(f"request {request_id}: not a stream chunk: {data[:300]}")
            if chunk.get("error"):
                raise BackendError(f"request {request_id}: the server's stream failed: {chunk['error']}")
            yield chunk


def _delta_texts(chunk: dict[str, Any]) -> Iterator[str]:
    for choice in chunk.get("choices") or []:
        if text := (choice.get("delta") or {}).get("content"):
            yield str(text)


def _finish_of(chunk: dict[str, Any]) -> object:
    """The chunk's finish_reason (null on every chunk but the one that ends the choice)."""
    return next((c.get("finish_reason") for c in chunk.get("choices") or [] if c.get("finish_reason")), None)


def _served_models(url: str, reply: httpx.Response) -> list[str]:
    try:
        return [str(m["id"]) for m in reply.json()["data"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelSourceError(f"{url} did not answer an OpenAI model list") from exc


def _deadline(request: GenerationRequest, started: float) -> float | None:
    return None if request.timeout_s is None else started + request.timeout_s


def _check(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise httpx.ReadTimeout("past the request's timeout")


def _read_by(reply: httpx.Response, deadline: float | None) -> bytes:
    """The reply's body, checking the deadline on each piece that arrives: a server trickling
    its body never lets httpx's per-read timeout fire."""
    parts = []
    for part in reply.iter_bytes():
        _check(deadline)
        parts.append(part)
    return b"".join(parts)


@contextmanager
def _cut_at(reply: httpx.Response, deadline: float | None) -> Iterator[None]:
    """Shut the reply's connection down at the deadline, so a read blocked on a server gone
    quiet returns then (EOF) rather than a whole read timeout after the last byte. Where there
    is no socket (a test's transport) the checks between pieces are the only bound."""
    sock = _socket_of(reply)
    if deadline is None or sock is None:
        yield
        return
    timer = threading.Timer(max(0.0, deadline - time.perf_counter()), _shut, (sock,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _socket_of(reply: httpx.Response) -> socket.socket | None:
    stream = reply.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    return sock if isinstance(sock, socket.socket) else None


def _shut(sock: socket.socket) -> None:
    """Shut down the connection under the socket, through a duplicate of its descriptor: for TLS,
    the SSLSocket's own shutdown() would drop its SSL state under the reading thread."""
    # OSError: already closed, the reply ended as the timer fired
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(sock.fileno())) as dup:
        dup.shutdown(socket.SHUT_RDWR)


def _counts(request: GenerationRequest, text: str, usage: dict[str, Any]) -> tuple[int, int]:
    """The reply's token counts: the server's usage where it sent them, else one estimate for
    both paths (experts.cost_model's, ~4/3 tokens a word). Counting a stream's pieces would
    depend on how the server split it, and 0 would make an unmetered reply look free."""
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (approx_prompt_tokens(m.content for m in request.messages) if prompt is None else int(prompt),
            round(approx_tokens(text)) if completion is None else int(completion))


def _to_generation(request: GenerationRequest, body: bytes, latency_s: float) -> Generation:
    """The reply as a Generation, built whole inside the guard: a null message, usage that is not
    a number or content that is not text is a malformed reply like any other (BackendError)."""
    request_id = request.request_id
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        prompt, completion = _counts(request, text, data.get("usage") or {})
        return Generation(request_id=request_id, text=text, prompt_tokens=prompt, completion_tokens=completion,
                          latency_s=latency_s, finish_reason=finish_reason_of(choice.get("finish_reason")))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:  # ValidationError is a ValueError
        shown = body[:300].decode(errors="replace")
        raise BackendError(f"request {request_id}: not a chat completion: {shown}") from exc
