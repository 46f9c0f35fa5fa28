"""The k-NN parameters are refitted every `refit_every` lessons (28 s at scale) off the pool's
lock and behind the lesson that made it due: learning, refreshes and replies go on meanwhile, and
the refit lands in the snapshot current then."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import orchestrator.routing.knn_router as knn_router
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.routing.knn_router import KnnRouter
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

EXPERTS = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
           mock_expert("gamma", "m2")]


def test_a_refit_runs_behind_the_feedback_that_made_it_due(tmp_path: Path, embedder: Embedder,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The refit ran under the pool's lock (every other lesson and refresh waited for it), then on
    the thread whose lesson made it due: every `refit_every`-th feedback's client waited for it
    (28 s at scale) before its reply. Both replies come while it is held; it lands after them."""
    pool_config = small_pool(EXPERTS).model_copy(update={"router": "knn"})
    c = SkillRoute(quiet_settings(tmp_path), pool_config, factory=mock_or_real, embedder=embedder)
    with TestClient(create_app(c, owns_container=True)):
        first, second = c.queries.ask([Ask(text="What is 2 + 3?", k=2), Ask(text="Who wrote Hamlet?", k=2)])
        c.pool.refit_every = 1
        real, fitting, release = knn_router.fit_params, threading.Event(), threading.Event()

        def held(*args: Any, **kwargs: Any) -> Any:
            fitting.set()
            assert release.wait(60), "the test never let the refit finish"
            return real(*args, **kwargs)

        monkeypatch.setattr(knn_router, "fit_params", held)
        replies = [threading.Thread(target=c.feedback.give, args=(q.id, True)) for q in (first, second)]
        try:
            replies[0].start()
            assert fitting.wait(60)
            replies[1].start()
            for reply in replies:
                reply.join(20)
                assert not reply.is_alive(), "a feedback's reply waited for a refit"
        finally:
            release.set()
        assert c.pool.refits.settled(60)
        snap = c.pool.snapshot
        assert isinstance(snap.router, KnnRouter) and snap.router.evidence is snap.evidence
        assert snap.evidence is not None and snap.evidence.learned_rows == 2
