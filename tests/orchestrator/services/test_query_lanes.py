"""Batches on different workers run at once: a chat to a model served elsewhere (an
OpenAI-compatible server) took 26 s behind a 29 s local generation for its 1 s reply, because the
window ran one batch at a time. Batches that share a worker still run in turn."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from experts.factory import make_backend
from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.pools.schema import AggregatorConfig, PoolConfig
from orchestrator.scheduling.worker import DeviceWorker
from orchestrator.services.expert_changes import ExpertChange
from skills.embedder import Embedder
from tests.experts.test_openai_http import SERVED, Recorder, make_app
from tests.live_server import live_server
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool
from tests.orchestrator.test_container import until

WAIT_S = 30.0  # an event not set by then means the order under test did not happen


class Held:
    """Mock generations that, once `hold` is set, wait for `release`: `entered` when one does."""

    def __init__(self) -> None:
        self.hold, self.entered, self.release = threading.Event(), threading.Event(), threading.Event()

    def __call__(self, request: GenerationRequest, word: int) -> None:
        if word == 0 and self.hold.is_set() and "HOLD" in request.messages[-1].content:
            self.entered.set()
            assert self.release.wait(WAIT_S)

    def factory(self, spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, gate=self) if spec.kind == "mock" else make_backend(spec)  # type: ignore[return-value]


def voted(experts: list[ExpertSpec]) -> PoolConfig:
    return small_pool(experts).model_copy(update={"aggregator": AggregatorConfig(mode="vote")})


def elsewhere(url: str) -> ExpertSpec:
    return ExpertSpec(name="there", base=BaseModelSpec(kind="openai", source=f"{url}/v1", model=SERVED[0]),
                      placement=ExpertPlacement(params_b=7.0))


@pytest.fixture
def service(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[SkillRoute, Held]]:
    held, rec = Held(), Recorder()
    with live_server(make_app(rec)) as url:
        pool = voted([mock_expert("here", "m1"), mock_expert("near", "m2"), elsewhere(url)])
        c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder, factory=held.factory)
        c.bootstrap()
        held.hold.set()
        try:
            yield c, held
        finally:
            held.release.set()
            c.close()


def test_a_chat_elsewhere_is_answered_while_a_local_batch_generates(service: tuple[SkillRoute, Held]) -> None:
    c, held = service
    local = c.queries.submit([Ask(text="HOLD: say hello.", expert="here")])
    assert held.entered.wait(WAIT_S)  # the local batch holds the CPU worker
    far = c.queries.submit([Ask(text="Say hi.", expert="there")])
    (row,) = far.result(timeout=WAIT_S)  # one at a time, it waited for the local batch
    assert row.status == "done" and row.answer == "echo: Say hi." and not local.done()
    held.release.set()
    assert local.result(timeout=WAIT_S)[0].status == "done"


def test_a_chat_on_the_same_worker_waits_for_the_batch_there(service: tuple[SkillRoute, Held]) -> None:
    """Two models on one worker: the second batch would load its model beside, or between, the
    first's stages; it starts once the first is done."""
    c, held = service
    first = c.queries.submit([Ask(text="HOLD: say hello.", expert="here")])
    assert held.entered.wait(WAIT_S)
    second = c.queries.submit([Ask(text="HOLD: say hello.", expert="near")])
    with pytest.raises(TimeoutError):
        second.result(timeout=1.0)  # it would have run at once: nothing else holds it
    held.release.set()
    assert [f.result(timeout=WAIT_S)[0].status for f in (first, second)] == ["done", "done"]


def test_after_a_restart_the_first_chat_elsewhere_does_not_wait_for_the_device(tmp_path: Path,
                                                                                embedder: Embedder) -> None:
    """A model served elsewhere loads (its client) under the device lock, which a local
    generation holds: after a start nothing had loaded it, and its first chat waited that out.
    The start connects to it on a thread of its own."""
    held = Held()
    with live_server(make_app(Recorder())) as url:
        pool = voted([mock_expert("here", "m1"), elsewhere(url)])
        SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder, factory=held.factory).bootstrap()
        c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder, factory=held.factory)  # a restart
        c.bootstrap()  # profiled already: no query or profiling run loads "there"
        try:
            until(lambda: elsewhere(url).base.key in c.fleet[c.fleet.default].resident(), within_s=WAIT_S)
            held.hold.set()
            local = c.queries.submit([Ask(text="HOLD: say hello.", expert="here")])
            assert held.entered.wait(WAIT_S)
            (row,) = c.queries.submit([Ask(text="Say hi.", expert="there")]).result(timeout=WAIT_S)
            assert row.status == "done" and not local.done()
        finally:
            held.release.set()
            c.close()


class Gates:
    """A generation whose prompt holds HOLD<n> waits for `release[n]`; `entered[n]` once it does."""

    def __init__(self) -> None:
        self.entered = {n: threading.Event() for n in (1, 2)}
        self.release = {n: threading.Event() for n in (1, 2)}

    def __call__(self, request: GenerationRequest, word: int) -> None:
        for n in (1, 2):
            if word == 0 and f"HOLD{n}" in request.messages[-1].content:
                self.entered[n].set()
                assert self.release[n].wait(WAIT_S)

    def factory(self, spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, gate=self)


@pytest.fixture
def on_w1(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[SkillRoute, Gates]]:
    """Experts a and c on w1 of two workers, their generations gated (`Gates`)."""
    gates = Gates()
    workers = {n: DeviceWorker(n, 8 * 2**30, gates.factory) for n in ("w1", "w2")}
    pinned = [mock_expert(n, f"m{n}").model_copy(update={"placement": ExpertPlacement(worker="w1")}) for n in "ac"]
    c = SkillRoute(quiet_settings(tmp_path), voted(pinned), embedder=embedder, factory=gates.factory, workers=workers)
    c.bootstrap()
    try:
        yield c, gates
    finally:
        for event in gates.release.values():
            event.set()
        c.close()


def move(c: SkillRoute, name: str, worker: str) -> None:
    expert = next(e.id for e in c.experts.all(profiles=False) if e.name == name)
    c.experts.update(expert, ExpertChange(spec={"placement": {"worker": worker}}))


def test_a_batch_takes_the_worker_its_expert_is_on_when_it_starts(on_w1: tuple[SkillRoute, Gates]) -> None:
    """Its lanes were read when it was queued: an expert placed on another worker meanwhile ran
    there while its batch held the worker it left (a query to that idle worker waited for it)."""
    c, gates = on_w1
    first = c.queries.submit([Ask(text="HOLD1 first", expert="a")])
    assert gates.entered[1].wait(WAIT_S)
    moved = c.queries.submit([Ask(text="HOLD2 second", expert="a")])  # queued on w1, which `first` holds
    move(c, "a", "w2")
    gates.release[1].set()
    assert gates.entered[2].wait(WAIT_S) and first.result(WAIT_S)[0].status == "done"  # `moved` runs on w2
    (row,) = c.queries.submit([Ask(text="To the idle w1.", expert="c")]).result(timeout=WAIT_S)
    assert row.status == "done" and not moved.done()


def test_a_query_waiting_for_a_busy_worker_starts_once_its_expert_moves_to_a_free_one(
        on_w1: tuple[SkillRoute, Gates]) -> None:
    """Nothing woke the window on a move: it waited out the batch on the worker it left."""
    c, gates = on_w1
    held = c.queries.submit([Ask(text="HOLD1 long", expert="c")])
    assert gates.entered[1].wait(WAIT_S)
    waiting = c.queries.submit([Ask(text="Short.", expert="a")])
    move(c, "a", "w2")
    assert waiting.result(timeout=WAIT_S)[0].status == "done" and not held.done()
