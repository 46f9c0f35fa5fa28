"""A profiling reply that failed (timeout, lost server) is an answer not given: unobserved, not
wrong. It moves no accuracy, no skill score and no k-NN mark; more than half failed still fails
the expert."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from experts.mock import MockBackend
from experts.types import BaseModelSpec, FinishReason, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import ArithmeticSource, PoolConfig, ValidationConfig
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.validation import ValidationRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings

QUESTIONS = 10


class Solver(MockBackend):
    """Right on every sum it is asked."""

    def _words(self, request: GenerationRequest) -> tuple[list[str], FinishReason]:
        prompt = "\n".join(m.content for m in request.messages)
        found = re.search(r"What is (\d+)([-+*])(\d+)\?", prompt)
        assert found is not None
        a, op, b = int(found[1]), found[2], int(found[3])
        return [f"Answer: {a + b if op == '+' else a - b if op == '-' else a * b}"], "stop"


def _failing(share: int) -> Callable[[GenerationRequest], str | None]:
    """Fails `share` requests in 10 (by the question's row id, so the same ones every run)."""
    return lambda r: "connection reset" if int(r.request_id.rsplit(":", 1)[1]) % 10 < share else None


def _service(tmp_path: Path, embedder: Embedder, share: int) -> SkillRoute:
    def factory(spec: BaseModelSpec) -> MockBackend:
        return Solver(spec.key, fault=_failing(share)) if spec.source == "flaky" else Solver(spec.key)

    pool = PoolConfig(validation=ValidationConfig(sources=[ArithmeticSource(n=QUESTIONS)]),
                      experts=[mock_expert("steady", "steady"), mock_expert("flaky", "flaky")])
    return SkillRoute(quiet_settings(tmp_path, router="knn"), pool, factory=factory, embedder=embedder)


@pytest.fixture
def four_in_ten(tmp_path: Path, embedder: Embedder) -> Iterator[SkillRoute]:
    c = _service(tmp_path, embedder, 4)
    c.bootstrap()
    yield c
    c.close()


def test_failed_replies_lower_no_accuracy_and_no_skill_score(four_in_ten: SkillRoute) -> None:
    with four_in_ten.db.session() as s:
        rows = {r.name: r for r in ExpertRepository(s).list()}
        answers = ValidationRepository(s).answers([rows["flaky"].id])
    assert rows["flaky"].status == "ready" and rows["flaky"].accuracy == rows["steady"].accuracy == 1.0
    assert all(sk.score > 0 for sk in rows["flaky"].skills)
    assert len(answers) == QUESTIONS - 4 and all(a.correct for a in answers)


def test_failed_replies_are_unobserved_in_the_knn_memory(four_in_ten: SkillRoute) -> None:
    evidence = four_in_ten.pool.snapshot.evidence
    assert evidence is not None and evidence.observed is not None and evidence.correct is not None
    assert int(evidence.observed["flaky"].sum()) == QUESTIONS - 4
    assert int(evidence.observed["steady"].sum()) == QUESTIONS
    assert bool(evidence.correct["flaky"][evidence.observed["flaky"]].all())


def test_an_expert_most_of_whose_replies_failed_fails_profiling(tmp_path: Path, embedder: Embedder) -> None:
    c = _service(tmp_path, embedder, 6)
    try:
        c.bootstrap()
        with c.db.session() as s:
            rows = {r.name: r for r in ExpertRepository(s).list()}
        assert rows["flaky"].status == "failed" and "connection reset" in (rows["flaky"].error or "")
        assert rows["steady"].status == "ready"
    finally:
        c.close()
