"""True token streaming over real HTTP with the official client: the decision in the headers
first, then the final generation's tokens as they are written (a gate holds the mock model
mid-reply: the client reads while it is held), time to first token well under the whole reply
on a 100-token answer at a set pace, and the query stored as an unstreamed one is."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from experts.mock import MockBackend
from experts.types import BaseModelSpec, GenerationRequest
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import GenerationBudget
from skills.embedder import Embedder
from tests.live_server import live_server
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

WORDS = 100
REPLY = " ".join(f"w{i}" for i in range(WORDS))
ASK = [{"role": "user", "content": "What is 12*12?"}]
WAIT_S = 20  # a gate not opened by then means the client never read while it was held
BREAK_AT = 2  # the words a request `Control.breaks` picks writes before its engine dies


class Control:
    """What the mock models do beyond answering, for the chat requests of a test: a pace per
    word, and a hold before word `hold_at` of requests `holds` picks, until `release`."""

    def __init__(self) -> None:
        self.pace_s = 0.0
        self.hold_at: int | None = None
        self.holds: Callable[[GenerationRequest], bool] = lambda r: False
        self.fails: Callable[[GenerationRequest], bool] = lambda r: False
        self.breaks: Callable[[GenerationRequest], bool] = lambda r: False  # write BREAK_AT words, then die
        self.held, self.release = threading.Event(), threading.Event()
        self.timed_out = False

    def gate(self, request: GenerationRequest, i: int) -> None:
        if i == BREAK_AT and self.breaks(request):
            raise RuntimeError("the engine broke mid-reply")  # a batch's generate fails all of its chunk
        if i == self.hold_at and self.holds(request):
            self.held.set()
            self.timed_out = not self.release.wait(WAIT_S)
        if self.pace_s:
            time.sleep(self.pace_s)  # the simulated model's pace, not a wait for readiness

    def fault(self, request: GenerationRequest) -> str | None:
        return "the aggregator broke" if self.fails(request) else None


@pytest.fixture
def served(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[SkillRoute, Control, str]]:
    control = Control()

    def mocks(spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, answer=REPLY, gate=control.gate, fault=control.fault)

    pool = small_pool([mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
                       mock_expert("gamma", "m2")])
    pool.generation = GenerationBudget(profiling_max_tokens=8, expert_max_tokens=128, aggregator_max_tokens=128)
    c = SkillRoute(quiet_settings(tmp_path), pool, factory=mocks, embedder=embedder)
    c.start()
    with live_server(create_app(c)) as url:
        yield c, control, url
    c.close()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def is_aggregation(request: GenerationRequest) -> bool:
    return request.request_id.endswith(":agg")


def test_the_aggregators_tokens_reach_the_client_while_it_is_still_writing(served) -> None:  # type: ignore[no-untyped-def]
    c, control, url = served
    control.hold_at, control.holds = WORDS // 2, is_aggregation
    raw = client(url).chat.completions.with_raw_response.create(model="auto", messages=ASK, seed=4, extra_body={"k": 3},  # type: ignore[arg-type]
                                                                 stream=True)
    headers, pieces = raw.headers, []
    assert headers["x-skillroute-aggregator"] and len(headers["x-skillroute-experts"].split(",")) == 3
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if len(pieces) == WORDS // 2 and not control.release.is_set():
            assert control.held.wait(WAIT_S)  # the client has read half the reply while the model is held
            control.release.set()
    assert not control.timed_out and "".join(pieces) == REPLY and len(pieces) == WORDS
    stored = c.chat.result(int(headers["x-skillroute-query-id"]))
    assert stored.model == headers["x-skillroute-aggregator"] and stored.content == REPLY


def test_time_to_first_token_is_under_half_the_whole_reply(served) -> None:  # type: ignore[no-untyped-def]
    _, control, url = served
    control.pace_s = 0.02  # 100 words: two seconds of writing
    started = time.perf_counter()
    first, pieces = None, []
    for chunk in client(url).chat.completions.create(model="gamma", messages=ASK, stream=True):  # type: ignore[arg-type]
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - started
            pieces.append(chunk.choices[0].delta.content)
    total = time.perf_counter() - started
    assert "".join(pieces) == REPLY and len(pieces) == WORDS
    assert first is not None and first < total / 2, (first, total)


def test_a_streamed_query_is_stored_as_an_unstreamed_one(served) -> None:  # type: ignore[no-untyped-def]
    c, _, url = served
    oai = client(url)
    streamed = oai.chat.completions.with_raw_response.create(model="auto", messages=ASK, seed=7, extra_body={"k": 2},  # type: ignore[arg-type]
                                                              stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed.parse() if ch.choices)
    plain = oai.chat.completions.with_raw_response.create(model="auto", messages=ASK, seed=7, extra_body={"k": 2})  # type: ignore[arg-type]
    assert text == plain.parse().choices[0].message.content
    ours, theirs = (c.queries.get(int(r.headers["x-skillroute-query-id"])) for r in (streamed, plain))
    assert ours.request == theirs.request and ours.answer == theirs.answer and ours.status == "done"
    assert ours.decision.record["recruited"] == theirs.decision.record["recruited"]
    assert [(g.expert, g.role, g.text, g.completion_tokens) for g in ours.generations] == \
        [(g.expert, g.role, g.text, g.completion_tokens) for g in theirs.generations]
    assert len(c.pipeline.streams) == 0  # the stream's sink is gone with its response


def test_an_aggregator_that_fails_still_streams_the_stored_answer(served) -> None:  # type: ignore[no-untyped-def]
    c, control, url = served
    control.fails = is_aggregation
    raw = client(url).chat.completions.with_raw_response.create(model="auto", messages=ASK, seed=4, extra_body={"k": 3},  # type: ignore[arg-type]
                                                                 stream=True)
    chunks = list(raw.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    stored = c.queries.get(int(raw.headers["x-skillroute-query-id"]))
    assert text == REPLY and chunks[-1].choices[0].finish_reason == "stop"
    assert [f["role"] for f in stored.decision.record["failures"]] == ["aggregator"]


def test_an_aggregator_that_breaks_mid_reply_ends_the_stream_in_an_error(served) -> None:  # type: ignore[no-untyped-def]
    """The reply falls back to the best-ranked answer, which begins as the broken pieces did:
    spliced on, the client would read another expert's reply under the aggregator's name. The
    aggregator (alpha, ranked first) fails as an expert too, so the best answer is not its own."""
    c, control, url = served
    control.breaks = is_aggregation
    control.fails = lambda r: not is_aggregation(r) and r.messages[0].content == "math persona"  # alpha's
    r = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                   json={"model": "auto", "messages": ASK, "seed": 4, "k": 3, "mode": "topk", "stream": True})
    stored = c.chat.result(int(r.headers["x-skillroute-query-id"]))
    assert stored.content == REPLY and stored.model != r.headers["x-skillroute-aggregator"]
    assert streamed_text(r.text) == "w0 w1 " and r.text.endswith("data: [DONE]\n\n")
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    error = json.loads(events[-2])["error"]
    assert error["code"] == "not_ready" and f"{stored.model} wrote the answer" in error["message"]


def test_a_client_that_leaves_mid_stream_leaves_the_query_answered(served) -> None:  # type: ignore[no-untyped-def]
    c, control, url = served
    control.hold_at, control.holds = 10, lambda r: True
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=30,
                      json={"model": "gamma", "messages": ASK, "stream": True}) as r:
        query_id = int(r.headers["x-skillroute-query-id"])
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk, then the client leaves
    control.release.set()
    assert until(lambda: c.queries.get(query_id).status == "done") and c.chat.result(query_id).content == REPLY
    assert until(lambda: len(c.pipeline.streams) == 0)


def test_a_stream_retried_with_its_idempotency_key_streams_the_first_query(served) -> None:  # type: ignore[no-untyped-def]
    c, _, url = served
    body: dict[str, Any] = {"model": "gamma", "messages": ASK, "stream": True}
    replies = [httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Idempotency-Key": "chat-1"}, timeout=30)
               for _ in range(2)]
    ids = {r.headers["x-skillroute-query-id"] for r in replies}
    assert len(ids) == 1 and all(r.status_code == 200 and r.text.endswith("data: [DONE]\n\n") for r in replies)
    assert [streamed_text(r.text) for r in replies] == [REPLY, REPLY]
    assert c.queries.get_many([int(ids.pop()) + 1]) == []  # no second query


def streamed_text(sse: str) -> str:
    events = [json.loads(line.removeprefix("data: ")) for line in sse.splitlines()
              if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))


def until(condition: Callable[[], bool], within_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)  # between polls of a condition, bounded by the deadline
    return False
