"""A deployment of two workers whose one query can be held: alpha answers on worker `quick`, beta
on worker `slow`, and a question marked HOLD waits on an event, so a test can look at a batch
whose short query is done while its long one still runs, without waiting on a clock."""

from __future__ import annotations

import threading
from pathlib import Path

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.scheduling.worker import DeviceWorker
from orchestrator.settings import BatchingSettings
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

WAIT_S = 30  # an event not set by then means the order under test did not happen
SLOW = "HOLD: what is 1+1?"


class Hold:
    """Holds every generation of a question marked HOLD until `release` is set."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, request: GenerationRequest) -> str | None:
        if not any("HOLD" in m.content for m in request.messages):
            return None
        self.entered.set()
        return None if self.release.wait(WAIT_S) else "the test never released it"


def two_workers(tmp_path: Path, embedder: Embedder, hold: Hold, batching: BatchingSettings) -> SkillRoute:
    """The deployment (started): alpha on `quick`, beta on `slow`, both over mock base m1."""
    def on(name: str, worker: str) -> ExpertSpec:
        return mock_expert(name, "m1").model_copy(update={"placement": ExpertPlacement(worker=worker)})

    def mocks(spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, fault=hold)

    workers = {n: DeviceWorker(n, 8 * 2**30, mocks) for n in ("quick", "slow")}
    c = SkillRoute(quiet_settings(tmp_path, batching=batching), small_pool([on("alpha", "quick"), on("beta", "slow")]),
                   embedder=embedder, workers=workers)
    c.start()
    return c
