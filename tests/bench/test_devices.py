"""bench/devices.py on a small batch: the keys it reports, loads at the floor, devices in parallel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPLAY = Path(__file__).resolve().parents[2].parent / "shared/data/mmlu_pro_replay"


def test_three_devices_beat_one_with_loads_at_the_floor(load_bench: Callable[[str], ModuleType]) -> None:
    if not REPLAY.is_dir():
        pytest.skip(f"the replay corpus is not at {REPLAY}")
    res = load_bench("devices").bench(str(REPLAY), 12, 3, 0.02)
    assert {"speedup", "predicted_speedup", "devices"} <= set(res)
    assert all(d["loads"] == d["loads_floor"] > 0 for d in res["devices"].values())
    assert len(res["three_devices"]["devices"]) == 3 and res["one_device"]["failed"] == 0
    assert res["predicted_speedup"] > 1.5 and res["speedup"] > 1.5  # three devices really ran at once
