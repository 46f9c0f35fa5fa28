"""Streaming on a device: the worker streams a request on its loaded model, holding the device
meanwhile; the fleet runs a streamed job before the worker's next batch, hands its pieces on
as they come, and its reply (or failure) like any job's."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace

from experts.mock import MockBackend
from experts.streaming import word_pieces
from experts.types import BaseModelSpec, ChatMessage, Generation, GenerationRequest, StreamEvent
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker

LONG = " ".join(f"w{i}" for i in range(8))


class BrokenStream(MockBackend):
    """Writes two words, then its engine dies."""

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        yield "w0 "
        yield "w1 "
        raise RuntimeError("engine crashed")


def factory(spec: BaseModelSpec) -> MockBackend:
    return (BrokenStream if spec.source == "broken" else MockBackend)(spec.key, answer=LONG)


def job(job_id: str, base: str = "m1") -> Job:
    request = GenerationRequest(request_id=job_id, messages=[ChatMessage(role="user", content=job_id)])
    return Job(job_id, BaseModelSpec(kind="mock", source=base), request)


def test_the_worker_streams_on_its_loaded_model_and_holds_the_device_meanwhile() -> None:
    w = DeviceWorker("cpu", 2**30, factory)
    j = job("s")
    events = w.stream(j.base, j.request)
    first = next(events)
    assert first == "w0 " and w.resident() == {"mock:m1"}
    held = threading.Thread(target=lambda: w.generate(j.base, [job("other").request]))
    held.start()
    held.join(timeout=0.2)  # a generate on the same device waits for the stream to end
    assert held.is_alive()
    rest = list(events)
    held.join(timeout=10)
    assert not held.is_alive() and isinstance(rest[-1], Generation) and first + "".join(map(str, rest[:-1])) == LONG


def test_a_streamed_job_runs_first_and_hands_each_piece_on_before_its_reply() -> None:
    fleet = Fleet({"cpu": DeviceWorker("cpu", 2**30, factory)})
    order: list[str] = []
    lock = threading.Lock()

    def on_reply(job_id: str, gen: Generation) -> None:
        with lock:
            order.append(f"reply:{job_id}")

    def on_piece(piece: str) -> None:
        with lock:
            order.append(piece)

    run = fleet.dispatch(on_reply)
    run.submit_stream("cpu", job("s"), on_piece)
    run.submit("cpu", [job("a"), job("b")])  # taken with the stream or after it: it runs after
    run.finish()
    run.wait()
    assert order == [*word_pieces(LONG), "reply:s", "reply:a", "reply:b"]


def test_a_stream_that_breaks_fails_its_job_alone() -> None:
    fleet = Fleet({"cpu": DeviceWorker("cpu", 2**30, factory)})
    replies: dict[str, Generation] = {}
    pieces: list[str] = []
    run = fleet.dispatch(lambda job_id, gen: replies.__setitem__(job_id, gen))
    run.submit_stream("cpu", job("s", "broken"), pieces.append)
    run.submit("cpu", [job("a")])
    run.finish()
    run.wait()
    assert pieces == ["w0 ", "w1 "] and replies["s"].error == "RuntimeError: engine crashed"
    assert replies["a"].error is None and replies["a"].text == LONG


def test_streamed_pieces_carry_the_text_the_reply_stores() -> None:
    """NUL is stored as U+FFFD (PostgreSQL refuses it); a piece that kept it would leave the
    streamed text unlike the stored reply, and the client's stream ends in an error."""
    fleet = Fleet({"cpu": DeviceWorker("cpu", 2**30, lambda spec: MockBackend(spec.key, answer="B\x00 because"))})
    replies: dict[str, Generation] = {}
    pieces: list[str] = []
    run = fleet.dispatch(lambda job_id, gen: replies.__setitem__(job_id, gen))
    run.submit_stream("cpu", job("s"), pieces.append)
    run.finish()
    run.wait()
    assert "".join(pieces) == replies["s"].text == "B\ufffd because"


class Unstreamed(MockBackend):
    """A backend that cannot stream (a vLLM engine, a recording): its generate calls recorded."""

    stream = None  # type: ignore[assignment]  # as `experts.streaming.stream_of` reads a backend without one
    calls: list[int] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        Unstreamed.calls.append(len(requests))
        return super().generate(requests)


def test_streamed_jobs_whose_model_cannot_stream_are_batched_and_handed_their_whole_reply() -> None:
    """Six streamed chats to a vLLM engine ran as six generate calls in turn, where a batch is one."""
    Unstreamed.calls = []
    fleet = Fleet({"cpu": DeviceWorker("cpu", 2**30, lambda spec: Unstreamed(spec.key, answer=LONG))})
    replies: dict[str, Generation] = {}
    pieces: dict[str, list[str]] = {}
    run = fleet.dispatch(lambda job_id, gen: replies.__setitem__(job_id, gen))
    streamed = [replace(job(f"s{i}"), base=BaseModelSpec(kind="replay", source="/rec", model="m")) for i in range(3)]
    with run._cond:  # taken together, as a window's streamed chats are
        run.submit("cpu", [replace(job("plain"), base=BaseModelSpec(kind="replay", source="/rec", model="m"))])
        for j in streamed:
            run.submit_stream("cpu", j, pieces.setdefault(j.job_id, []).append)
    run.finish()
    run.wait()
    assert Unstreamed.calls == [3, 1]  # first, on their own: someone is watching them
    assert all(pieces[j.job_id] == [LONG] and replies[j.job_id].text == LONG for j in streamed)
