"""ProfilingService tells the budgets what each expert's profiling replies took, and where
(the real llama.cpp path: tests/orchestrator/api/test_budgets_real.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from experts.types import ExpertSpec, Generation
from orchestrator.container import SkillRoute
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
