"""bench/load.py and bench/routing_latency.py refuse, before starting anything, more questions
than the replay test split holds (they ran short phases and then crashed on the percentiles),
naming the largest count that fits."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from tests.bench.conftest import load_script
from tests.conftest import SliceRecording

MODELS = ["Llama-2-7b-hf", "Llama-2-13b-hf"]


@pytest.fixture(scope="module")
def small_pool(slice_recording: SliceRecording, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    """A replay pool over a few questions per category, and how many its test split holds."""
    folder = slice_recording(tmp_path_factory.mktemp("rec"), MODELS, 4)
    return f"replay:{folder}", load_script("replay_profiles").split_test_size(str(folder))


def refused(bench: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_load_refuses_more_requests_than_the_test_split_holds(
    load_bench: Callable[[str], ModuleType], small_pool: tuple[str, int],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    bench = load_bench("load")
    monkeypatch.setattr(bench, "measure", lambda *a: pytest.fail("measured though the questions run out"))
    pool, held = small_pool
    err = refused(bench, ["--url", "http://unused", "--pool", pool, "--requests", str(held // 2 + 1)], capsys)
    assert f"holds {held}" in err and f"largest allowed --requests is {held // 2} with --rounds 1" in err
    err = refused(bench, ["--url", "http://unused", "--pool", pool, "--requests", "4", "--rounds", str(held)],
                  capsys)
    assert f"--rounds at most {held // 4 - 1} with --requests 4" in err
    assert f"largest allowed --requests is {held // 3} with --mixed" in refused(
        bench, ["--url", "http://unused", "--pool", pool, "--requests", str(held // 3 + 1), "--mixed"], capsys)
    assert bench.too_many(pool, held // 2, 1, False) is None and bench.too_many(pool, held // 3, 1, True) is None
    assert bench.too_many("a mock pool", 10**6, 9, False) is None  # made-up questions never run out


def test_routing_latency_refuses_more_queries_than_the_test_split_holds(
    load_bench: Callable[[str], ModuleType], small_pool: tuple[str, int],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    bench = load_bench("routing_latency")
    monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("measured though the questions run out"))
    pool, held = small_pool
    err = refused(bench, ["--pool", pool, "--queries", str(held // 4 + 1)], capsys)
    assert f"holds {held}" in err and f"largest allowed --queries is {held // 4} ({held // 3} with --no-http)" in err
    err = refused(bench, ["--pool", pool, "--queries", str(held // 3 + 1), "--no-http"], capsys)
    assert f"largest allowed --queries is {held // 3}" in err
    assert bench.too_many(pool, held // 4, http=True) is None and bench.too_many(pool, held // 3, http=False) is None


def test_the_limit_is_what_the_benches_are_given(small_pool: tuple[str, int]) -> None:
    pool, held = small_pool
    questions = load_script("load").questions
    assert 0 < len(questions(pool, held + 5)) == held == len(set(questions(pool, held)))
