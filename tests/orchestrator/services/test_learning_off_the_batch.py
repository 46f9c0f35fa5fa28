"""A batch's clients get their answers once they are stored, not once the router has learned from
them: lessons are applied behind the window by one learner, in order, and a close applies what is
still queued (audit r7/r8: a refit on the window's thread held every client and every query behind it)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.services.learning_queue import LearningQueue
from orchestrator.settings import LearningSettings, Settings
from orchestrator.store.models import LessonRow
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, small_pool

QUESTION = "Which gas do plants absorb for photosynthesis?\nA) Oxygen\nB) Carbon dioxide\nC) Nitrogen\nD) Helium"
EXPERTS = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
           mock_expert("gamma", "m2")]


class Gate:
    """A learn that records what it was given and holds until `release` (it says when it is entered)."""

    def __init__(self, fail_on: object = None) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.applied: list[object] = []
        self.fail_on = fail_on

    def __call__(self, taught: object) -> None:
        self.entered.set()
        self.release.wait()
        if taught == self.fail_on:
            raise RuntimeError("the store went away")
        self.applied.append(taught)


@pytest.fixture
def competing(tmp_path: Path, embedder: Embedder) -> Iterator[SkillRoute]:
    """Every query competes and teaches at once (consensus), so each one answered brings a lesson."""
    learning = LearningSettings(competition_rate=1.0, explore_rate=0.0, per_minute=1000, consensus_teaches=True)
    pool = small_pool(EXPERTS).model_copy(update={"router": "knn"})
    c = SkillRoute(Settings(data_dir=tmp_path, learning=learning), pool, factory=mock_or_real, embedder=embedder)
    c.start()
    yield c
    c.close()


def stored_lessons(c: SkillRoute) -> int:
    with c.db.session() as s:
        return s.scalar(select(func.count()).select_from(LessonRow)) or 0


def test_a_batch_is_answered_while_its_lessons_are_still_being_learned(competing, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    c, gate = competing, Gate()
    real = c.pool.learn
    monkeypatch.setattr(c.pool, "learn", lambda taught: (gate(taught), real(taught)))
    counts = c.pool.evidence_counts()
    try:
        rows = c.queries.submit([Ask(text=QUESTION, k=1, seed=1)]).result(timeout=30)  # learning still held
        assert rows[0].status == "done" and gate.entered.wait(30)
        assert stored_lessons(c) == 0 and c.pool.evidence_counts() == counts  # not learned yet
    finally:
        gate.release.set()
    c.queries.learned()
    assert stored_lessons(c) == 1 and all(c.pool.evidence_counts()[n] == counts[n] + 1 for n in counts)


def test_closing_applies_the_lessons_still_queued(competing, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    c, gate = competing, Gate()
    real = c.pool.learn
    monkeypatch.setattr(c.pool, "learn", lambda taught: (gate(taught), real(taught)))
    for seed in (1, 2, 3):
        c.queries.submit([Ask(text=QUESTION, k=1, seed=seed)]).result(timeout=30)
    gate.release.set()
    c.close()  # the window first, then the learner, before the store is released
    assert len(gate.applied) == 3 and stored_lessons(c) == 3


def test_lessons_are_applied_one_batch_at_a_time_in_the_order_they_came() -> None:
    gate, inside, most = Gate(), [0], [0]
    lock = threading.Lock()

    def learn(taught: int) -> None:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        gate(taught)
        with lock:
            inside[0] -= 1

    learner: LearningQueue[int] = LearningQueue(learn)
    for batch in range(10):
        learner.submit(batch)
    gate.release.set()
    learner.learned()
    assert gate.applied == list(range(10)) and most[0] == 1
    learner.close()


def test_a_failed_batch_loses_only_its_own_lessons(caplog) -> None:  # type: ignore[no-untyped-def]
    gate = Gate(fail_on=1)
    gate.release.set()
    learner: LearningQueue[int] = LearningQueue(gate)
    with caplog.at_level(logging.ERROR):
        for batch in range(3):
            learner.submit(batch)
        learner.learned()
    assert gate.applied == [0, 2] and "learning" in caplog.text
    learner.close()


def test_past_its_bound_the_queue_holds_the_window_rather_than_grow() -> None:
    gate = Gate()
    learner: LearningQueue[int] = LearningQueue(gate, bound=2)
    learner.submit(0)
    assert gate.entered.wait(30)  # batch 0 is being learned: the queue is empty again
    learner.submit(1)
    learner.submit(2)  # the bound: two batches waiting
    third = threading.Thread(target=learner.submit, args=(3,))
    third.start()
    third.join(timeout=0.2)
    assert third.is_alive()  # it waits for room, it is not dropped
    gate.release.set()
    third.join(timeout=30)
    learner.learned()
    assert gate.applied == [0, 1, 2, 3]
    learner.close()
