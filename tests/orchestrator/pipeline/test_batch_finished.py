"""A batch hands each query on as soon as it is done (`finished`), with its workers' time up to
then, while its long queries still run; `answer` still returns every outcome at the end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, Outcome
from orchestrator.settings import BatchingSettings
from skills.embedder import Embedder
from tests.orchestrator.pipeline.held import SLOW, WAIT_S, Hold, two_workers

ASKS = [Ask(text=SLOW, expert="beta"), Ask(text="What is 2+2?", expert="alpha")]


@pytest.fixture
def held(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[SkillRoute, Hold]]:
    hold = Hold()
    c = two_workers(tmp_path, embedder, hold, BatchingSettings())
    yield c, hold
    hold.release.set()
    c.close()


class Handed:
    """What `finished` was handed, in order; `quick` is set once query 1 (the quick one) is."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[int, Outcome]] = []
        self.quick = threading.Event()

    def __call__(self, at: int, outcome: Outcome) -> None:
        self.outcomes.append((at, outcome))
        if at == 1:
            self.quick.set()


def answering(c: SkillRoute, finished: Handed) -> tuple[threading.Thread, list[list[Outcome]]]:
    """`Pipeline.answer` of ASKS on a thread of its own; its outcomes land in the list."""
    snapshot, returned = c.pool.snapshot, list[list[Outcome]]()
    decisions = c.pipeline.route(snapshot, ASKS)
    run = threading.Thread(target=lambda: returned.append(c.pipeline.answer(snapshot, ASKS, decisions,
                                                                            finished=finished)))
    run.start()
    return run, returned


def test_a_query_is_handed_on_when_it_is_done_with_its_device_time_so_far(held) -> None:  # type: ignore[no-untyped-def]
    c, hold = held
    handed = Handed()
    run, returned = answering(c, handed)
    assert handed.quick.wait(WAIT_S) and hold.entered.wait(WAIT_S)
    assert [at for at, _ in handed.outcomes] == [1]  # the slow one is still held
    early = handed.outcomes[0][1].decision.devices
    assert [d.worker for d in early] == ["quick"] and (early[0].measured_s or 0) > 0  # its take, in progress
    hold.release.set()
    run.join(WAIT_S)
    assert sorted(at for at, _ in handed.outcomes) == [0, 1]  # each once
    quick, slow = returned[0][1], returned[0][0]
    assert quick.text == handed.outcomes[0][1].text and slow.error is None
    assert (early[0].measured_s or 0) <= (quick.decision.devices[0].measured_s or 0)  # the whole batch's


def test_a_receiver_that_raises_loses_nothing_of_the_batch(held) -> None:  # type: ignore[no-untyped-def]
    c, hold = held
    hold.release.set()

    def broken(at: int, outcome: Outcome) -> None:
        raise RuntimeError("the storer is gone")

    snapshot = c.pool.snapshot
    outcomes = c.pipeline.answer(snapshot, ASKS, c.pipeline.route(snapshot, ASKS), finished=broken)
    assert [o.error for o in outcomes] == [None, None] and all(o.text for o in outcomes)
