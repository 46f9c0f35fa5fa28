"""One key may hold at most half the backlog's bound in queries not yet answered: a key whose rate
limit counts requests filled the bound with ten batches of 1,000, and every other key's query was
then a 503 for as long as its answers took."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from experts.mock import MockBackend
from experts.types import GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.services.batches import BatchEntry
from orchestrator.services.errors import RateLimited
from orchestrator.settings import BatchingSettings
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

WAIT_S = 30  # an event not set by then means the order under test did not happen


def test_one_key_holds_at_most_half_the_bound_and_others_are_still_taken(tmp_path: Path,
                                                                         embedder: Embedder) -> None:
    started, gate = threading.Event(), threading.Event()

    def hold(request: GenerationRequest) -> str | None:  # a query marked HOLD keeps the runner busy
        if any("HOLD" in m.content for m in request.messages):
            started.set()
            assert gate.wait(WAIT_S), "the test never opened the gate"
        return None

    settings = quiet_settings(tmp_path, batching=BatchingSettings(max_batch=1, max_waiting=4))
    c = SkillRoute(settings, small_pool([mock_expert("alpha", "m1")]),
                   factory=lambda s: MockBackend(s.key, fault=hold), embedder=embedder)
    c.bootstrap()
    try:
        def ask(text: str, key: int | None) -> Ask:
            return Ask(text=text, k=1, key_id=key)

        mine = [c.queries.submit([ask("HOLD: what is 1+1?", 7)])]
        assert started.wait(WAIT_S)
        mine.append(c.queries.submit([ask("What is 2+2?", 7)]))  # two of the bound's four: its share
        with pytest.raises(RateLimited, match="this key has 2 queries accepted and not yet answered"):
            c.queries.submit([ask("What is 3+3?", 7)])
        with pytest.raises(RateLimited):
            c.batches.submit([BatchEntry(ask("What is 4+4?", 7))])
        others = [c.queries.submit([ask("What is 5+5?", 8)]), c.queries.submit([ask("What is 6+6?", None)])]
        gate.set()
        assert [q.error for f in (*mine, *others) for q in f.result(WAIT_S)] == [None] * 4
        again = c.batches.submit([BatchEntry(ask(f"What is {i}+1?", 7)) for i in range(3)])  # answered: room again
        assert again > 0
    finally:
        gate.set()
        c.close()
