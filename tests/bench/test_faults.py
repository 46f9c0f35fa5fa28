"""bench/faults.py on a small batch: injected errors, timeouts and a killed worker lose nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

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
