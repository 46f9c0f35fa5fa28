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
from orchestrator.pools.schema import AggregatorConfig
from skills.embedder import Embedder
from tests.experts.test_openai_http import SERVED, Recorder, make_app
from tests.live_server import live_server
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

WAIT_S = 30.0  # an event not set by then means the order under test did not happen


class Held:
    """Mock generations that, once `hold` is set, wait for `release`: `entered` when one does."""

    def __init__(self) -> None:
        self.hold, self.entered, self.release = threading.Event(), threading.Event(), threading.Event()

    def __call__(self, _request: GenerationRequest, word: int) -> None:
        if word == 0 and self.hold.is_set():
            self.entered.set()
            assert self.release.wait(WAIT_S)

    def factory(self, spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, gate=self) if spec.kind == "mock" else make_backend(spec)  # type: ignore[return-value]


@pytest.fixture
def service(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[SkillRoute, Held]]:
    held, rec = Held(), Recorder()
    with live_server(make_app(rec)) as url:
        far = ExpertSpec(name="there", base=BaseModelSpec(kind="openai", source=f"{url}/v1", model=SERVED[0]),
                         placement=ExpertPlacement(params_b=7.0))
        pool = small_pool([mock_expert("here", "m1"), mock_expert("near", "m2"), far])
        pool = pool.model_copy(update={"aggregator": AggregatorConfig(mode="vote")})
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
    local = c.queries.submit([Ask(text="Say hello.", expert="here")])
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
    first = c.queries.submit([Ask(text="Say hello.", expert="here")])
    assert held.entered.wait(WAIT_S)
    second = c.queries.submit([Ask(text="Say hello.", expert="near")])
    with pytest.raises(TimeoutError):
        second.result(timeout=1.0)  # it would have run at once: nothing else holds it
    held.release.set()
    assert [f.result(timeout=WAIT_S)[0].status for f in (first, second)] == ["done", "done"]
