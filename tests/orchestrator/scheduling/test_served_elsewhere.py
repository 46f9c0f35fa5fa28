"""Stages whose model is served elsewhere (an OpenAI-compatible server) run beside the worker's
other stages: against a real HTTP server, two such experts' requests are in flight at once, and
one's reply comes while a local model generates on the device."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from experts.factory import make_backend
from experts.mock import MockBackend
from experts.types import BaseModelSpec, ChatMessage, ExpertPlacement, ExpertSpec, Generation, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.pools.schema import AggregatorConfig
from orchestrator.scheduling.executor import ELSEWHERE_THREADS, execute
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker
from skills.embedder import Embedder
from tests.experts.test_openai_http import SERVED, Recorder, make_app
from tests.live_server import live_server
from tests.orchestrator.conftest import quiet_settings, small_pool
from tests.orchestrator.test_container import until

WAIT_S = 5.0  # how long one side waits for the other before giving up (a failed test, not a hang)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()
    with live_server(make_app(rec)) as url:
        yield f"{url}/v1", rec


def job(job_id: str, base: BaseModelSpec) -> Job:
    return Job(job_id, base, GenerationRequest(request_id=job_id, messages=[ChatMessage(role="user", content=job_id)]))


def remote(url: str, model: str) -> BaseModelSpec:
    return BaseModelSpec(kind="openai", source=url, model=model)


def test_two_experts_served_elsewhere_are_asked_at_once(served: tuple[str, Recorder]) -> None:
    url, rec = served
    rec.__init__(gather=2, gather_timeout_s=WAIT_S)  # type: ignore[misc]  # each reply waits for the other request
    worker = DeviceWorker()
    out = execute([job(m, remote(url, m)) for m in SERVED], worker)
    assert rec.max_in_flight == 2  # in turn, the first waited WAIT_S alone and was answered alone
    assert all(out[m].error is None and out[m].text == f"echo: {m}" for m in SERVED)


def test_a_reply_from_elsewhere_comes_while_the_device_generates(served: tuple[str, Recorder]) -> None:
    url, rec = served
    rec.__init__()  # type: ignore[misc]
    seen = threading.Event()

    def gate(_request: GenerationRequest, word: int) -> None:  # the local model's first word waits for the server
        if word == 0 and not seen.is_set():
            for _ in range(int(WAIT_S / 0.01)):
                if rec.bodies:
                    seen.set()
                    break
                threading.Event().wait(0.01)

    local = BaseModelSpec(kind="mock", source="local")
    worker = DeviceWorker(factory=lambda s: MockBackend(s.key, gate=gate) if s.kind == "mock" else make_backend(s))
    far = remote(url, SERVED[0])
    worker.ensure_loaded(local), worker.ensure_loaded(far)  # resident: the local stage is planned first
    out = execute([job("here", local), job("there", far)], worker)
    assert seen.is_set()  # in turn, the server's request came only after the local stage ended
    assert out["there"].text == "echo: there" and out["here"].error is None


def test_a_model_served_elsewhere_is_never_unloaded_to_make_room(served: tuple[str, Recorder]) -> None:
    """It holds no memory here, so unloading it frees none, and would close its client under
    the requests it has in flight (it generates with the device let go)."""
    url, _ = served
    mib = 100 * 2**20
    worker = DeviceWorker(memory_budget_bytes=mib, factory=lambda s: MockBackend(s.key, mib) if s.kind == "mock"
                          else make_backend(s))
    far = worker.ensure_loaded(remote(url, SERVED[0]))
    for source in "ab":  # b's load evicts a, the least recently used model that frees anything
        worker.ensure_loaded(BaseModelSpec(kind="mock", source=source))
    assert far.is_loaded and worker.resident() == {remote(url, SERVED[0]).key, "mock:b"}


class Gate:
    """A server whose replies to `holds` (its chat, or its model list) wait for the test:
    `arrived` once such a request is in, `release` lets it finish."""

    def __init__(self, holds: str = "chat") -> None:
        self.holds = holds
        self.arrived, self.release = threading.Event(), threading.Event()

    async def _held(self, what: str) -> None:
        if what == self.holds and not self.release.is_set():
            self.arrived.set()
            while not self.release.is_set():
                await asyncio.sleep(0.005)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            await self._held("models")
            return {"object": "list", "data": [{"id": "m", "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat() -> dict[str, Any]:
            await self._held("chat")
            message = {"role": "assistant", "content": "whole"}
            return {"object": "chat.completion", "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1},
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}

        return app


@pytest.mark.parametrize("let_go", [
    lambda worker, key: worker.unload(key),
    lambda worker, key: worker.forget(key),
    lambda worker, key: worker.shutdown(),
], ids=["unload", "forget", "shutdown"])
def test_a_model_let_go_while_it_replies_is_closed_once_the_reply_ends(
        let_go: Callable[[DeviceWorker, str], None]) -> None:
    """It generates without the device, which an unload (an expert removed, a failed validation
    forgetting its model, a shutdown) used to wait for: it closed the client under the reply
    (`Bad file descriptor`). The unload returns at once and the client closes after the reply."""
    gate = Gate()
    with live_server(gate.app()) as url:
        base = BaseModelSpec(kind="openai", source=f"{url}/v1", model="m")
        worker = DeviceWorker()
        backend = worker.ensure_loaded(base)
        out: dict[str, Any] = {}
        run = threading.Thread(target=lambda: out.update(execute([job("g", base)], worker)))
        run.start()
        assert gate.arrived.wait(WAIT_S)
        let_go(worker, base.key)  # returns: nothing of the worker's is held by the reply
        assert base.key not in worker.resident() and backend.is_loaded  # gone for new work, not from under the reply
        gate.release.set()
        run.join(WAIT_S)
    assert out["g"].error is None and out["g"].text == "whole"
    assert not backend.is_loaded  # closed once the reply ended


def test_work_elsewhere_never_holds_the_worker_s_next_take(served: tuple[str, Recorder]) -> None:
    """A competitor on another server, run in the CPU worker's take, held the next query's
    aggregation there for its 2 s (past that query's budget): it runs on threads of the batch's own."""
    gate = Gate()
    with live_server(gate.app()) as url:
        far, local = BaseModelSpec(kind="openai", source=f"{url}/v1", model="m"), BaseModelSpec(kind="mock", source="l")
        second = threading.Event()

        def on_reply(job_id: str, gen: Generation) -> None:
            if job_id == "first":  # as an aggregation follows its experts
                run.submit("cpu", [job("second", local)])
            elif job_id == "second":
                second.set()

        run = Fleet({"cpu": DeviceWorker()}).dispatch(on_reply)
        run.submit("cpu", [job("far", far), job("first", local)])
        assert gate.arrived.wait(WAIT_S)
        answered = second.wait(WAIT_S)  # while the far reply is held
        gate.release.set()
        run.finish()
        run.wait()
    assert answered


def test_streams_elsewhere_run_at_once(served: tuple[str, Recorder]) -> None:
    """Two streamed chats on two servers' models ran in turn, each its worker's take."""
    url, rec = served
    rec.__init__(gather=2, gather_timeout_s=WAIT_S)  # type: ignore[misc]
    replies: dict[str, Generation] = {}
    run = Fleet({"cpu": DeviceWorker()}).dispatch(replies.__setitem__)
    for model in SERVED:
        run.submit_stream("cpu", job(model, remote(url, model)), lambda _piece: None)
    run.finish()
    run.wait()
    assert rec.max_in_flight == 2 and all(replies[m].text == f"echo: {m}" for m in SERVED)


def test_a_query_answered_elsewhere_reports_no_device_time_here(served: tuple[str, Recorder], tmp_path: Path,
                                                                 embedder: Embedder) -> None:
    """Its experts' replies are their servers' time, run beside the worker's work: the worker's
    predicted seconds summed them (2.17 s for three 0.72 s replies, 1.5 s measured in parallel)."""
    url, rec = served
    rec.__init__()  # type: ignore[misc]
    experts = [ExpertSpec(name=m, base=remote(url, m), placement=ExpertPlacement(params_b=7.0)) for m in SERVED]
    pool = small_pool(experts).model_copy(update={"aggregator": AggregatorConfig(mode="vote")})
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder)
    c.bootstrap()
    asked, snapshot = [Ask(text="What is 2+2?\nA. 3\nB. 4", k=2, mode="topk")], c.pool.snapshot
    try:
        (out,) = c.pipeline.answer(snapshot, asked, c.pipeline.route(snapshot, asked))
    finally:
        c.close()
    assert sorted(out.decision.recruited) == sorted(SERVED) and out.decision.devices == []


def test_a_job_a_reply_from_elsewhere_sends_after_the_worker_s_thread_ended_still_runs() -> None:
    """A far reply handed on after the worker had finished its queue (and its thread ended) sent
    the aggregation it completes to that worker: it was never run, and the batch ended without it."""
    far, near = BaseModelSpec(kind="openai", source="http://far/v1", model="m"), BaseModelSpec(kind="mock", source="l")
    release = threading.Event()

    def held(request: GenerationRequest, word: int) -> None:
        if request.request_id == "far" and word == 0:
            assert release.wait(WAIT_S)

    replies: dict[str, Generation] = {}

    def on_reply(job_id: str, gen: Generation) -> None:
        replies[job_id] = gen
        if job_id == "far":
            run.submit("cpu", [job("agg", near)])

    worker = DeviceWorker("cpu", 2**30, lambda s: MockBackend(s.key, memory=0, gate=held))
    run = Fleet({"cpu": worker}).dispatch(on_reply)
    run.submit("cpu", [job("near", near), job("far", far)])
    run.finish()
    ended = run._queues["cpu"].thread  # the worker's thread, done with "near"
    assert ended is not None
    ended.join(WAIT_S)
    release.set()
    run.wait()
    assert sorted(replies) == ["agg", "far", "near"]


def test_work_elsewhere_is_bounded_across_batches() -> None:
    """Each batch had its own 8 threads for it; batches on other workers now run at once, and 8
    such batches sent 64 calls to a worker actor that answers 16 at a time (its local stages
    among them): all batches' calls elsewhere share the fleet's 8."""
    count, gate = {"now": 0, "most": 0}, threading.Event()
    lock = threading.Lock()

    def executor(jobs, worker, keep_last=None, emit=None):  # type: ignore[no-untyped-def]
        with lock:
            count["now"] += 1
            count["most"] = max(count["most"], count["now"])
        assert gate.wait(WAIT_S * 6)
        with lock:
            count["now"] -= 1
        emit({j.job_id: Generation.failed(j.request.request_id, "held") for j in jobs})

    fleet = Fleet({"cpu": DeviceWorker()}, executor=executor)
    runs = [fleet.dispatch(lambda _id, _gen: None) for _ in range(2)]
    for n, run in enumerate(runs):
        for m in range(ELSEWHERE_THREADS):  # a run a model
            run.submit("cpu", [job(f"{n}-{m}", remote("http://127.0.0.1:9/v1", f"model-{m}"))])
    until(lambda: count["now"] == ELSEWHERE_THREADS and fleet.elsewhere._work_queue.qsize() == ELSEWHERE_THREADS)
    gate.set()
    for run in runs:
        run.finish()
        run.wait()
    fleet.shutdown()
    assert count["most"] == ELSEWHERE_THREADS


def test_a_batch_outliving_the_fleet_s_shutdown_still_sends_its_calls_elsewhere() -> None:
    """A close shuts the fleet down after the window's bounded wait; a batch still running then
    raised out of its submit ("cannot schedule new futures after shutdown") and left its device
    threads waiting for good."""
    fleet = Fleet({"cpu": DeviceWorker()})
    fleet.shutdown()
    out = fleet.execute({"cpu": [job("x", remote("http://127.0.0.1:9/v1", "m"))]})
    assert out["x"].error is not None  # its own reply: nothing listens there
