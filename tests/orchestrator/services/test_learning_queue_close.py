"""A close racing a batch's hand-over: the lessons are learned, or refused and logged, never left
behind the learner's stop sentinel (review r4: a close between `submit`'s closed check and its
put left them unlearned, and `learned()` waited forever)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from orchestrator.services.learning_queue import LearningQueue

WAIT_S = 30  # a thread not done by then is stuck


def test_a_close_while_a_batch_hands_its_lessons_over_learns_them_first() -> None:
    learnt: list[str] = []
    learner: LearningQueue[str] = LearningQueue(learnt.append)
    closer = threading.Thread(target=learner.close)
    real_put = learner._q.put

    def put_during_a_close(item: str | None, *args: Any, **kwargs: Any) -> None:
        if item is not None:  # submit has checked the queue is open: a close starts now
            closer.start()
            closer.join(timeout=0.2)
            assert closer.is_alive()  # it waits for the hand-over; it does not stop the learner under it
        real_put(item, *args, **kwargs)

    learner._q.put = put_during_a_close  # type: ignore[method-assign]
    learner.submit("the batch's lessons")
    closer.join(WAIT_S)
    assert not closer.is_alive() and learnt == ["the batch's lessons"]
    waiter = threading.Thread(target=learner.learned, daemon=True)
    waiter.start()
    waiter.join(WAIT_S)
    assert not waiter.is_alive()


def test_lessons_left_behind_the_stop_are_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    learner: LearningQueue[str] = LearningQueue(lambda _: None)
    real_put = learner._q.put

    def put_one_behind_the_stop(item: str | None, *args: Any, **kwargs: Any) -> None:
        real_put(item, *args, **kwargs)
        if item is None:  # as if a hand-over had slipped in after the sentinel
            real_put("stray lessons")

    learner._q.put = put_one_behind_the_stop  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        learner.close()
    waiter = threading.Thread(target=learner.learned, daemon=True)
    waiter.start()
    waiter.join(WAIT_S)
    assert not waiter.is_alive() and "1 batch" in caplog.text
