"""A streamed k=1 chat whose lone expert fails before writing: its stand-in writes the reply,
and the chunks name the stand-in, as the plain (stored) reply does."""

from __future__ import annotations

import json

import httpx
from openai.types.chat import ChatCompletionChunk

from orchestrator.container import SkillRoute
from tests.orchestrator.api.test_streaming import ASK, REPLY, Control, client, served, streamed_text

__all__ = ["served"]  # the fixture, shared with test_streaming.py


def test_the_chunks_name_the_stand_in_that_wrote_them(served: tuple[SkillRoute, Control, str]) -> None:
    c, control, url = served
    control.fails = lambda r: r.request_id.endswith(":0:1")  # the first attempt at draw 0 fails
    raw = client(url).chat.completions.with_raw_response.create(model="auto", messages=ASK, seed=1,  # type: ignore[arg-type]
                                                                 extra_body={"k": 1, "mode": "topk"}, stream=True)
    chunks: list[ChatCompletionChunk] = list(raw.parse())  # type: ignore[arg-type]  # stream=True: a Stream
    stored = c.chat.result(int(raw.headers["x-skillroute-query-id"]))
    assert stored.decision.fallbacks == [stored.model] and stored.decision.failures  # a stand-in wrote it
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == REPLY
    assert {ch.model for ch in chunks} == {stored.model}


def test_a_lone_expert_that_breaks_mid_reply_is_not_spliced_onto_its_stand_in(
        served: tuple[SkillRoute, Control, str]) -> None:
    """The stand-in's pieces went on the same stream after the broken expert's, under its name:
    the client read "w0 w1 w0 w1 w2 …". The stream ends in an error after the broken pieces, as an
    aggregator's does, and the stored reply is the stand-in's."""
    c, control, url = served
    control.breaks = lambda r: r.request_id.endswith(":0:1")  # the first attempt at draw 0 breaks
    r = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                   json={"model": "auto", "messages": ASK, "seed": 1, "k": 1, "mode": "topk", "stream": True})
    stored = c.chat.result(int(r.headers["x-skillroute-query-id"]))
    assert stored.content == REPLY and stored.decision.fallbacks == [stored.model]
    assert streamed_text(r.text) == "w0 w1 " and r.text.endswith("data: [DONE]\n\n")
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["code"] == "not_ready"
