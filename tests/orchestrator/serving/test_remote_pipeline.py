"""The unchanged pipeline against a real worker actor (Ray in this process, mock weights).

Slow only because it starts Ray (~15 s); the weights are mocks so what is checked is the
process boundary: same answers as inline, loads still at the floor, errors still typed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from experts.backend import ExpertBackend
from experts.factory import make_backend
from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertSpec
from experts.workers import WorkerSpec
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, Outcome
from orchestrator.pools.schema import ArithmeticSource, MMLUSource, PoolConfig, ValidationConfig, ValidationSource
from orchestrator.services.errors import Unprocessable
from orchestrator.serving.remote_worker import RemoteWorker
from orchestrator.serving.worker_actor import spawn
from skills.embedder import Embedder
from tests.orchestrator.conftest import quiet_settings

pytestmark = pytest.mark.slow

SUBJECTS = ["high school mathematics", "world religions", "college chemistry", "jurisprudence"]


def mock_or_real(spec: BaseModelSpec) -> ExpertBackend:
    return MockBackend(spec.key) if spec.kind == "mock" else make_backend(spec)


def pool() -> PoolConfig:
    experts = [ExpertSpec(name=n, base=BaseModelSpec(kind="mock", source=b), system_prompt=p)
               for n, b, p in [("alpha", "m1", "math persona"), ("beta", "m1", "law persona"), ("gamma", "m2", None)]]
    sources: list[ValidationSource] = [ArithmeticSource(n=6), MMLUSource(per_subject=2, subjects=SUBJECTS)]
    return PoolConfig(validation=ValidationConfig(sources=sources), experts=experts)


@pytest.fixture
def remote(local_ray: None) -> Iterator[RemoteWorker]:
    actor = spawn(WorkerSpec(name="test", device="local-cpu"), 2**30, mock_or_real)
    yield RemoteWorker(actor)
    ray.kill(actor)  # detached actors outlive their creator: each test gets a fresh device


def answer(c: SkillRoute, asks: list[Ask]) -> list[Outcome]:
    """Route, then answer: the pipeline's two steps, as admission and the window run them."""
    snapshot = c.pool.snapshot
    return c.pipeline.answer(snapshot, asks, c.pipeline.route(snapshot, asks))


def containers(tmp_path: Path, embedder: Embedder, remote: RemoteWorker) -> tuple[SkillRoute, SkillRoute]:
    inline = SkillRoute(quiet_settings(tmp_path / "inline"), pool(), factory=mock_or_real, embedder=embedder)
    on_ray = SkillRoute(quiet_settings(tmp_path / "ray"), pool(), embedder=embedder, workers={"test": remote})
    for c in (inline, on_ray):
        c.bootstrap()
    return inline, on_ray


def test_pipeline_through_the_actor_answers_like_inline_with_loads_at_the_floor(tmp_path, embedder, remote):
    inline, on_ray = containers(tmp_path, embedder, remote)
    assert on_ray.pool.snapshot.aggregator == inline.pool.snapshot.aggregator
    remote.shutdown()  # start cold so every base model must be loaded
    before = remote.total_loads()
    inputs = [Ask(text=f"What is {i}*{i + 3}?", k=3, seed=i) for i in range(12)]
    ours = answer(on_ray, inputs)
    theirs = answer(inline, inputs)
    assert [o.text for o in ours] == [o.text for o in theirs]
    assert remote.total_loads() - before == 2  # m1 and m2, once each, across the process boundary
    assert [e[1] for e in remote.timeline()][-2:] == ["load", "load"]
    inline.close()


def test_a_bad_model_is_refused_with_the_backends_own_message(tmp_path, embedder, remote):
    _, on_ray = containers(tmp_path, embedder, remote)
    missing = tmp_path / "missing.gguf"
    spec = ExpertSpec(name="bad", base=BaseModelSpec(kind="llamacpp", source=str(missing)))
    with pytest.raises(Unprocessable) as refused:
        on_ray.experts.register(spec)
    assert str(missing) in refused.value.message and "Traceback" not in refused.value.message
    assert "bad" not in {e.name for e in on_ray.experts.all()}


def test_closing_a_container_leaves_the_actors_models_resident(tmp_path, embedder, remote):
    _, on_ray = containers(tmp_path, embedder, remote)
    answer(on_ray, [Ask(text="What is 2+2?", k=1, seed=0)])
    resident = remote.resident()
    on_ray.close()
    assert resident and remote.resident() == resident
