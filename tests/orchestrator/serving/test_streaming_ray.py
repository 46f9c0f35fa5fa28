"""Streaming through a real worker actor (Ray in this process, mock weights): each piece leaves
the actor as it is written. A gate holds the model inside the actor's process, signalled by
files (the one thing both processes see), while the caller already holds the first pieces;
over HTTP, the client reads them while the model is held. Slow only because it starts Ray."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import ray

from experts.backend import ExpertBackend
from experts.factory import make_backend
from experts.mock import MockBackend
from experts.streaming import word_pieces
from experts.types import BaseModelSpec, ChatMessage, Generation, GenerationRequest
from experts.workers import WorkerSpec
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.serving.remote_worker import RemoteWorker, WorkerLost
from orchestrator.serving.worker_actor import spawn
from skills.embedder import Embedder
from tests.live_server import live_server
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

pytestmark = pytest.mark.slow

REPLY = " ".join(f"w{i}" for i in range(20))
MARK = "HOLD-ME"
HOLD_AT = 3
WAIT_S = 30


class FileGate:
    """Holds a request carrying MARK before word HOLD_AT: says so with `held`, waits for `release`."""

    def __init__(self, folder: Path):
        self.held, self.release = folder / "held", folder / "release"

    def __call__(self, request: GenerationRequest, i: int) -> None:
        if i != HOLD_AT or not any(MARK in m.content for m in request.messages):
            return
        self.held.touch()
        wait_for(self.release.exists)


class GatedMocks:
    """The actor's backend factory (it travels to the actor by value)."""

    def __init__(self, folder: Path):
        self.gate = FileGate(folder)

    def __call__(self, spec: BaseModelSpec) -> ExpertBackend:
        return MockBackend(spec.key, answer=REPLY, gate=self.gate) if spec.kind == "mock" else make_backend(spec)


def wait_for(condition: object, within_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.01)  # between polls of a file: the signal that crosses the process boundary
    return False


@pytest.fixture
def gated(local_ray: None, tmp_path: Path) -> Iterator[tuple[RemoteWorker, FileGate]]:
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    actor = spawn(WorkerSpec(name="stream-test", device="local-cpu"), 2**30, GatedMocks(gate_dir))
    yield RemoteWorker(actor), FileGate(gate_dir)
    ray.kill(actor)  # detached actors outlive their creator: each test gets a fresh device


def held_request() -> GenerationRequest:
    return GenerationRequest(request_id="r", messages=[ChatMessage(role="user", content=f"{MARK} What is 2+2?")])


def test_pieces_leave_the_actor_while_its_model_is_still_writing(gated: tuple[RemoteWorker, FileGate]) -> None:
    remote, gate = gated
    base = BaseModelSpec(kind="mock", source="m1")
    events = remote.stream(base, held_request())
    first = [next(events) for _ in range(HOLD_AT)]
    assert first == word_pieces(REPLY)[:HOLD_AT]
    assert wait_for(gate.held.exists) and not gate.release.exists()  # the model is held, the pieces are here
    gate.release.touch()
    rest = list(events)
    assert isinstance(rest[-1], Generation) and rest[-1].text == REPLY
    assert "".join(map(str, first + rest[:-1])) == REPLY and remote.resident() == {base.key}


def test_a_worker_lost_mid_stream_is_a_clean_error(gated: tuple[RemoteWorker, FileGate]) -> None:
    remote, gate = gated
    events = remote.stream(BaseModelSpec(kind="mock", source="m1"), held_request())
    assert next(events) == "w0 " and wait_for(gate.held.exists)
    ray.kill(remote.actor, no_restart=False)
    with pytest.raises(WorkerLost, match="lost mid-generation"):
        list(events)


def test_an_http_stream_through_the_actor_arrives_token_by_token(gated: tuple[RemoteWorker, FileGate],
                                                                 tmp_path: Path, embedder: Embedder) -> None:
    remote, gate = gated
    pool = small_pool([mock_expert("alpha", "m1", "math persona"), mock_expert("gamma", "m2")])
    c = SkillRoute(quiet_settings(tmp_path / "data"), pool, embedder=embedder, workers={"stream-test": remote})
    c.start()
    with live_server(create_app(c)) as url:
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        pieces: list[str] = []
        for chunk in oai.chat.completions.create(model="gamma", messages=[{"role": "user", "content": MARK}],
                                                 stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if len(pieces) == HOLD_AT and not gate.release.exists():
                assert wait_for(gate.held.exists)  # the client holds these while the actor's model is held
                gate.release.touch()
    assert pieces == word_pieces(REPLY)
    c.close()
