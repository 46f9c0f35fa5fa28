"""The profiling set never holds one question id twice, and profiling refuses a set it cannot
trust (none at all, or one another service stored that is not this configuration's)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from experts.replay_ids import MAX_QUESTION_ID
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import ArithmeticSource, MMLUProSource, PoolConfig, ValidationConfig, ValidationSource
from orchestrator.services.profiling import load_source, merge_sources
from orchestrator.store.db import migrate
from orchestrator.store.models import ValidationQuestion
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.validation import ValidationRepository
from skills.datasets import LabelledQuestion
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings


def _service(tmp_path: Path, embedder: Embedder, sources: list[ValidationSource]) -> SkillRoute:
    pool = PoolConfig(validation=ValidationConfig(sources=sources),
                      experts=[mock_expert("alpha", "m1"), mock_expert("beta", "m2")])
    return SkillRoute(quiet_settings(tmp_path), pool, factory=mock_or_real, embedder=embedder)


def _pro_file(folder: Path, questions: Sequence[tuple[str, str]]) -> str:
    """A questions.jsonl.gz of (id, text) rows, one category, answer A."""
    folder.mkdir(parents=True)
    with gzip.open(folder / "questions.jsonl.gz", "wt", encoding="utf-8") as fh:
        for qid, text in questions:
            row = {"question_id": qid, "question": text, "options": ["yes", "no"], "answer": "A", "category": "law"}
            fh.write(json.dumps(row) + "\n")
    return str(folder)


def _statuses(c: SkillRoute) -> dict[str, str]:
    with c.db.session() as s:
        return {r.name: r.status for r in ExpertRepository(s).list()}


def test_two_arithmetic_sources_profile_on_their_questions_once(tmp_path: Path, embedder: Embedder) -> None:
    """Both draw arith-0-0.. from the pool seed: the same questions, kept once, not a set the
    store refuses whole (which left every expert ready with an empty profile)."""
    c = _service(tmp_path, embedder, [ArithmeticSource(n=4), ArithmeticSource(n=6)])
    try:
        c.bootstrap()
        items = c.profiler.validation_set()
        assert len(items) == 6 and len({it.question.id for it in items}) == 6
        with c.db.session() as s:
            assert all(r.status == "ready" and r.skills for r in ExpertRepository(s).list())
    finally:
        c.close()


def test_sources_whose_ids_collide_on_other_questions_keep_both(tmp_path: Path, embedder: Embedder) -> None:
    first = _pro_file(tmp_path / "a", [("1", "Is a contract binding?"), ("2", "Is a tort a crime?")])
    second = _pro_file(tmp_path / "b", [("1", "Is a will revocable?")])
    c = _service(tmp_path / "data", embedder, [MMLUProSource(path=first), MMLUProSource(path=second)])
    try:
        migrate(c.settings.db_url)
        texts = [it.question.question for it in c.profiler.validation_set()]
        assert texts == ["Is a contract binding?", "Is a tort a crime?", "Is a will revocable?"]
    finally:
        c.close()


def test_an_empty_set_fails_profiling_and_no_expert_is_ready(tmp_path: Path, embedder: Embedder) -> None:
    c = _service(tmp_path / "data", embedder, [MMLUProSource(path=_pro_file(tmp_path / "none", []))])
    try:
        with pytest.raises(RuntimeError, match="no questions"):
            c.bootstrap()
        assert "ready" not in _statuses(c).values()
    finally:
        c.close()


def test_a_refused_set_is_only_read_back_when_it_is_this_one(
        tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store refused the set, but what it holds under this key is not the set built here
    (one row of it): profiling on that would profile on the wrong questions."""
    c = _service(tmp_path, embedder, [ArithmeticSource(n=4)])
    try:
        migrate(c.settings.db_url)
        row = c.profiler._build_rows()[0]
        with c.db.session() as s:
            ValidationRepository(s).add_questions(c.profiler.dataset, [row])
        real, looked = ValidationRepository.questions, []

        def none_the_first_time(repo: ValidationRepository, dataset: str) -> Sequence[ValidationQuestion]:
            looked.append(dataset)
            return [] if len(looked) == 1 else real(repo, dataset)

        monkeypatch.setattr(ValidationRepository, "questions", none_the_first_time)
        with pytest.raises(RuntimeError, match="refused"):
            c.profiler.validation_set()
    finally:
        c.close()


def test_questions_under_one_id_are_renamed_while_a_name_is_free() -> None:
    same = [LabelledQuestion("7", text, ("yes", "no"), "A", "law")
            for text in ("Is a contract binding?", "Is a will revocable?", "Is a tort a crime?")]
    assert [q.id for q in merge_sources([[same[0]], same[:2]])] == ["7", "7@1"]
    with pytest.raises(ValueError, match="'7@0' names two different questions"):
        merge_sources([same])


def test_a_question_repeated_under_a_later_id_is_asked_once_as_its_first_copy(tmp_path: Path) -> None:
    """A replay expert answers every copy (same text and options) with the first's recorded
    letter: profiling graded that letter twice and never the copy's own. The copy goes before the
    draw, so a limited set cannot hold the copy without its first."""
    folder = _pro_file(tmp_path / "rec", [("1", "Is a contract binding?"), ("2", "Is a tort a crime?"),
                                          ("3", "Is a contract  BINDING?"), ("4", "Is a will revocable?")])
    assert [q.id for q in load_source(MMLUProSource(path=folder), seed=0)] == ["1", "2", "4"]
    drawn = [load_source(MMLUProSource(path=folder, limit=2), seed=s) for s in range(8)]
    assert all("3" not in {q.id for q in d} and len(d) == 2 for d in drawn)


def test_a_long_id_taken_by_another_source_is_renamed_within_what_the_store_keeps() -> None:
    """`id@index` past 128 characters failed the start on PostgreSQL (varchar(128))."""
    long_id = "q" * MAX_QUESTION_ID
    first, second = (LabelledQuestion(long_id, text, ("yes", "no"), "A", "maths") for text in ("One?", "Two?"))
    ids = [q.id for q in merge_sources([[first], [second]])]
    assert ids[0] == long_id and ids[1].endswith("@1") and len(ids[1]) == MAX_QUESTION_ID
