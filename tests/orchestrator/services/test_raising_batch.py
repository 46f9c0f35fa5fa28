"""A batch whose pipeline raises after its queries were stored done (the planner, the policy or the
lessons failed): those queries are counted, and the lessons taught for them still go to the learner
(review r1: counted nowhere, as `_fail` leaves a done row, and the batch's lessons dropped unlogged)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain import Ask
from orchestrator.services.queries import Taught
from orchestrator.settings import BatchingSettings
from skills.embedder import Embedder
from tests.orchestrator.pipeline.held import WAIT_S, Hold, two_workers

LESSON: Any = object()  # stands for a lesson: the learner is replaced, nothing reads it


def test_early_stored_rows_of_a_raising_batch_are_counted_and_their_lessons_handed_over(
        tmp_path: Path, embedder: Embedder, caplog: pytest.LogCaptureFixture) -> None:
    hold = Hold()
    hold.release.set()
    c = two_workers(tmp_path, embedder, hold, BatchingSettings(max_batch=2, wait_ms=0))
    done = c.metrics.queries.labels("done")
    handed: list[Taught] = []
    real = c.queries.pipeline.answer

    def answer_then_raise(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        kwargs["learn"](0, LESSON)
        raise RuntimeError("the probe broke after the batch ran")

    c.queries.pipeline.answer = answer_then_raise  # type: ignore[method-assign]
    c.queries.learner.submit = handed.append  # type: ignore[method-assign]
    try:
        before = done._value.get()
        with caplog.at_level(logging.WARNING):
            (row,) = c.queries.submit([Ask(text="What is 2+2?", expert="alpha")]).result(WAIT_S)
            c.queries.running.wait()
        assert c.queries.get(row.id).status == "done" and done._value.get() - before == 1
        assert handed == [[(row.id, LESSON)]] and "lessons" in caplog.text
    finally:
        c.close()
