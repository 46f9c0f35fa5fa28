"""Token streams: the mock writes word by word (paced, gated, cut by max_tokens and stop), a
backend without a stream of its own (replay) streams its whole reply once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from experts.mock import MockBackend
from experts.replay import ReplayBackend, load_recording
from experts.streaming import collect, stream_of, word_pieces
from experts.types import BaseModelSpec, ChatMessage, ExpertSpec, Generation, GenerationRequest, SamplingParams
from skills.datasets import LabelledQuestion, format_prompt
from tests.conftest import SliceRecording

LONG = " ".join(f"word{i}" for i in range(12))


def request(rid: str = "r", **sampling: object) -> GenerationRequest:
    return GenerationRequest(request_id=rid, messages=[ChatMessage(role="user", content="What is 2+2?")],
                             sampling=SamplingParams.model_validate(sampling))


def loaded(**kwargs: object) -> MockBackend:
    b = MockBackend("mock:a", **kwargs)  # type: ignore[arg-type]
    b.load()
    return b


def test_word_pieces_join_back_to_the_text() -> None:
    for text in ["Answer: B (1234)", "  lead and trail  ", "one", "", "   "]:
        assert "".join(word_pieces(text)) == text
    assert word_pieces("a b  c") == ["a ", "b  ", "c"]


def test_the_mock_streams_word_by_word_what_generate_writes() -> None:
    b = loaded(answer=LONG)
    events = list(b.stream(request()))
    pieces, last = events[:-1], events[-1]
    assert all(isinstance(p, str) for p in pieces) and len(pieces) == 12
    assert isinstance(last, Generation) and "".join(pieces) == last.text == LONG
    assert last == b.generate([request()])[0]
    assert (b.stream_calls, b.generate_calls) == (1, 1) and len(b.requests) == 2


def test_the_mock_honours_max_tokens_stop_and_temperature() -> None:
    b = loaded(answer=LONG)
    assert b.generate([request(max_tokens=3)])[0].text == "word0 word1 word2 "
    assert b.generate([request(max_tokens=3)])[0].completion_tokens == 3
    assert b.generate([request(stop=["word4"])])[0].text == "word0 word1 word2 word3 "
    plain = loaded()
    greedy = {plain.generate([request(seed=s)])[0].text for s in range(6)}
    sampled = {plain.generate([request(seed=s, temperature=0.9)])[0].text for s in range(6)}
    assert len(greedy) == 1 and len(sampled) == 6  # the seed matters only when it samples


def test_a_gate_holds_the_stream_after_what_it_let_through() -> None:
    let_through, opened = threading.Semaphore(0), threading.Event()

    def gate(_: GenerationRequest, i: int) -> None:
        if i == 2:
            assert opened.wait(timeout=10), "the test never opened the gate"

    b = loaded(answer=LONG, gate=gate)
    got: list[object] = []

    def consume() -> None:
        for event in b.stream(request()):
            got.append(event)
            let_through.release()

    reader = threading.Thread(target=consume)
    reader.start()
    assert let_through.acquire(timeout=10) and let_through.acquire(timeout=10)
    assert got == ["word0 ", "word1 "]  # written so far, while the rest waits
    opened.set()
    reader.join(timeout=10)
    assert isinstance(got[-1], Generation) and got[-1].text == LONG


def test_a_failed_request_streams_no_text_only_its_error() -> None:
    b = loaded(fault=lambda r: "boom")
    events = list(b.stream(request()))
    assert len(events) == 1 and isinstance(events[0], Generation) and events[0].error == "boom"


def test_a_backend_without_a_stream_streams_its_reply_once(slice_recording: SliceRecording, tmp_path: Path) -> None:
    folder = slice_recording(tmp_path / "rec", ["Meta-Llama-3_1-8B-Instruct"], 1)
    b = ReplayBackend(folder, "Meta-Llama-3_1-8B-Instruct")
    b.load()
    q = next(iter(load_recording(folder).questions.values()))
    text = format_prompt(LabelledQuestion(q.question_id, q.question, q.options, q.answer, q.category))
    base = BaseModelSpec(kind="replay", source=str(folder), model="Meta-Llama-3_1-8B-Instruct")
    req = ExpertSpec(name="x", base=base).request("r", text)
    events = list(stream_of(b, req))
    assert len(events) == 2 and events[0] == events[1].text and events[1].text.startswith("Answer:")  # type: ignore[union-attr]
    assert collect(events) == b.generate([req])[0]


def test_collect_needs_the_reply() -> None:
    with pytest.raises(RuntimeError, match="without its reply"):
        collect(iter(["a", "b"]))
