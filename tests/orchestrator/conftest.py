"""A SkillRoute over mock backends (the boundary the slow tests cover for real)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from fastapi.testclient import TestClient

from experts.factory import make_backend
from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import ArithmeticSource, MMLUSource, PoolConfig, ValidationConfig
from orchestrator.settings import LearningSettings, Settings
from skills.embedder import Embedder

SUBJECTS = ["high school mathematics", "world religions", "college chemistry", "jurisprudence"]


class CountingEmbedder(Embedder):
    """The real embedder, counting every text it is asked to encode (a cache hit counts too)."""

    def __init__(self, inner: Embedder):
        super().__init__(kind=inner.kind)
        self.inner, self.texts = inner, Counter[str]()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.update(texts)
        return self.inner.encode(texts)


def mock_or_real(spec: BaseModelSpec):  # type: ignore[no-untyped-def]
    """Mock bases are fakes; every other kind goes through the real factory and its checks."""
    return MockBackend(spec.key) if spec.kind == "mock" else make_backend(spec)


def mock_expert(name: str, base: str, persona: str | None = None) -> ExpertSpec:
    return ExpertSpec(name=name, base=BaseModelSpec(kind="mock", source=base), system_prompt=persona)


def small_pool(experts: list[ExpertSpec]) -> PoolConfig:
    sources = [ArithmeticSource(n=6), MMLUSource(per_subject=2, subjects=SUBJECTS)]
    return PoolConfig(validation=ValidationConfig(sources=sources), experts=experts)


def quiet_settings(data_dir, **fields):  # type: ignore[no-untyped-def]
    """Settings whose router never competes or explores on its own, so a test's queries run
    exactly what they were routed to (tests/orchestrator/services/test_learning.py turns it on)."""
    quiet = LearningSettings(competition_rate=0.0, explore_rate=0.0)
    return Settings(data_dir=data_dir, learning=quiet, **fields)


@pytest.fixture
def container(tmp_path, embedder, database):
    """`database`: SQLite under tmp_path, or Postgres too where tests/conftest.py's BOTH_DATABASES says."""
    experts = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
               mock_expert("gamma", "m2")]
    c = SkillRoute(quiet_settings(tmp_path, database=database), small_pool(experts), factory=mock_or_real,
                   embedder=embedder)
    c.bootstrap()
    yield c
    c.close()


@pytest.fixture
def client(container):
    with TestClient(create_app(container)) as tc:
        yield tc
