"""bench/faults.py on a small batch: injected errors, timeouts and a killed worker lose nothing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.settings import Settings

REPLAY = Path(__file__).resolve().parents[2].parent / "shared/data/mmlu_pro_replay"


@pytest.mark.slow
def test_nothing_is_lost_and_the_killed_worker_comes_back(load_bench: Callable[[str], ModuleType],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if not REPLAY.is_dir():
        pytest.skip(f"the replay corpus is not at {REPLAY}")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    res = load_bench("faults").bench(str(REPLAY), 60, 0.1, 0.05)
    assert res["submitted"] == 60 and res["lost"] == 0 and res["answered"] + res["failed_cleanly"] == 60
    assert res["failed_with_a_surviving_expert"] == 0
    assert res["worker_killed"] and res["killed_worker_back"]
    failed = res["failed_generations"]
    assert failed["injected_errors"] > 0 and failed["timeouts"] > 0 and failed["stand_ins"] > 0


def test_ray_starts_under_the_projects_auth_setting(load_bench: Callable[[str], ModuleType],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    faults = load_bench("faults")
    seen: list[str | None] = []
    monkeypatch.setattr(faults.ray, "init", lambda **_: seen.append(os.environ.get("RAY_AUTH_MODE")))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    faults.start_ray(Settings())
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # one set by whoever runs it is kept
    faults.start_ray(Settings())
    assert seen == ["disabled", "token"]  # unset, Ray 2.60 would write a token into ~/.ray
