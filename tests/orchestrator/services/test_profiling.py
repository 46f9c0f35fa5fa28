"""ProfilingService tells the budgets what each expert's profiling replies took, and where
(the real llama.cpp path: tests/orchestrator/api/test_budgets_real.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from experts.backend import ExpertBackend
from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertSpec, Generation
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import PoolConfig, ValidationConfig
from orchestrator.store.db import migrate
from orchestrator.store.models import ValidationQuestion
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.validation import ValidationRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool


def test_each_expert_s_profiling_replies_are_told_with_its_worker(
        tmp_path: Path, embedder: Embedder) -> None:
    experts = [mock_expert("alpha", "m1", "math persona"), mock_expert("gamma", "m2")]
    c = SkillRoute(quiet_settings(tmp_path), small_pool(experts), factory=mock_or_real, embedder=embedder)
    told: list[tuple[str, str, int]] = []

    def tell(spec: ExpertSpec, worker: str, replies: Sequence[Generation]) -> None:
        assert all(g.error is None and g.latency_s >= 0 for g in replies)
        told.append((spec.name, worker, len(replies)))

    c.profiler.timed = tell
    try:
        c.bootstrap()
        questions = len(c.profiler.validation_set())
        assert sorted(told) == [("alpha", c.fleet.default, questions), ("gamma", c.fleet.default, questions)]
    finally:
        c.close()


def test_each_profiling_answer_is_stored_with_what_its_reply_took(tmp_path: Path, embedder: Embedder) -> None:
    """What a restart reads back to cost each model by its own runs (`services.timings`)."""
    experts = [mock_expert("alpha", "m1"), mock_expert("gamma", "m2")]
    c = SkillRoute(quiet_settings(tmp_path), small_pool(experts), factory=mock_or_real, embedder=embedder)
    try:
        c.bootstrap()
        with c.db.session() as s:
            ids = [e.id for e in ExpertRepository(s).list()]
            timed = ValidationRepository(s).timings(ids, 10_000)
        assert len(timed) == len(ids) * len(c.profiler.validation_set())
        assert all(r.prompt_tokens > 0 and r.latency_s >= 0 for r in timed)
    finally:
        c.close()


def test_a_validation_set_another_service_stored_meanwhile_is_read_back(
        tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two services found no set and built one each: the second's insert meets the first's rows
    (unique dataset and qid), and it reads those instead of failing its start."""
    c = SkillRoute(quiet_settings(tmp_path), small_pool([mock_expert("alpha", "m1")]), factory=mock_or_real,
                   embedder=embedder)
    try:
        migrate(c.settings.db_url)
        stored = [it.row_id for it in c.profiler.validation_set()]
        real, looked = ValidationRepository.questions, []

        def none_the_first_time(repo: ValidationRepository, dataset: str) -> Sequence[ValidationQuestion]:
            looked.append(dataset)  # the first look ran before the other service stored its set
            return [] if len(looked) == 1 else real(repo, dataset)

        monkeypatch.setattr(ValidationRepository, "questions", none_the_first_time)
        assert [it.row_id for it in c.profiler.validation_set()] == stored
    finally:
        c.close()


def _keyword_pool(samples: int) -> PoolConfig:
    """A pool whose validation set's skills are read by its `reader` expert (llm mode)."""
    experts = [mock_expert("alpha", "m1"), ExpertSpec(name="reader", base=BaseModelSpec(kind="mock", source="reader"))]
    base = small_pool(experts)
    v = ValidationConfig(sources=base.validation.sources, keyword_mode="llm", keyword_expert="reader",
                         keyword_samples=samples)
    return base.model_copy(update={"validation": v})


def test_a_removed_keyword_expert_reads_no_new_set_and_its_skills_fall_back_with_a_warning(
        tmp_path: Path, embedder: Embedder, caplog: pytest.LogCaptureFixture) -> None:
    """Removed over the API, it stays removed at a start, but a changed validation section
    loaded its model again and had it read every question's keywords, silently. Its set's
    skills are now those nearest each question's embedding, as live queries fall back to."""
    asked: list[str] = []

    def factory(spec: BaseModelSpec) -> ExpertBackend:
        if spec.source != "reader":
            return mock_or_real(spec)
        return MockBackend(spec.key, answer="Keywords: photosynthesis, chlorophyll",
                           fault=lambda r: asked.append(r.request_id) or None)

    c = SkillRoute(quiet_settings(tmp_path), _keyword_pool(3), factory=factory, embedder=embedder)
    try:
        c.start()
        assert asked and all("photosynthesis" in it.skills for it in c.profiler.validation_set())
        c.experts.remove(next(e.id for e in c.experts.all() if e.name == "reader"))
    finally:
        c.close()
    asked.clear()
    c = SkillRoute(quiet_settings(tmp_path), _keyword_pool(2), factory=factory, embedder=embedder)
    try:
        with caplog.at_level(logging.WARNING, logger="orchestrator.services.profiling"):
            c.start()
        items = c.profiler.validation_set()
        assert {e.name: e.status for e in c.experts.all()} == {"alpha": "ready", "reader": "removed"}
    finally:
        c.close()
    assert asked == []
    assert all(it.skills and "photosynthesis" not in it.skills for it in items)
    assert any("keyword expert 'reader' was removed" in r.getMessage() for r in caplog.records)
