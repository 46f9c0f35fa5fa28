"""bench/streaming.py in mock mode: a 100-word answer at a set pace reaches the client word by
word, its first word long before its last."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType


def test_the_first_token_comes_well_before_the_full_answer(load_bench: Callable[[str], ModuleType]) -> None:
    res = load_bench("streaming").bench(mock=True, runs=1)
    assert res["backend"] == "mock" and res["model"] == "writer" and res["pieces"] == 100  # all of it, uncut
    assert set(res) >= {"ttft_s", "total_s", "ratio"}
    assert res["total_s"] >= 100 * 0.02 and res["ratio"] < 0.5, res

