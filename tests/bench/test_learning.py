"""The learning benchmark end to end on a small slice of the real recording."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from skills.embedder import get_embedder

MODELS = ["Llama-2-7b-hf", "Meta-Llama-3_1-8B-Instruct", "mathstral-7B", "Mistral-7B-Instruct-v0.2", "gemma-7b"]


@pytest.fixture(scope="module")
def report(load_bench: Callable[[str], ModuleType], slice_recording: Callable[[Path, Sequence[str], int], Path],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = slice_recording(tmp_path_factory.mktemp("learning"), MODELS, 30)
    bench = load_bench("learning")
    argv = [str(folder), "--json", "--seed-questions", "60", "--segments", "3", "--seeds", "0", "--draws", "2",
            "--no-cache"]
    out = io.StringIO()  # a module-scoped fixture cannot use capsys
    with contextlib.redirect_stdout(out):
        assert bench.main(argv, embedder=get_embedder()) == 0
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


def test_every_variant_runs_every_segment_on_both_pools(report: dict[str, object]) -> None:
    assert report["seeds"] == [0] and set(report["segments"]) == {"open_le_13b", "all"}  # type: ignore[arg-type]
    names = {"static", "static_all_profiled", "competition_5", "competition_20", "feedback_10",
             "profiled_on_everything"}
    for pool in report["segments"].values():  # type: ignore[attr-defined]
        assert set(pool) == names
        assert all(len(r["accuracy"]) == 3 and all(0 <= a <= 1 for a in r["accuracy"]) for r in pool.values())
    gains = report["last_segment_gain_open_detail"]  # type: ignore[index]
    assert report["last_segment_gain_open"] == max(d["mean"] for d in gains.values())


def test_only_learners_learn_and_recruit_the_late_model(report: dict[str, object]) -> None:
    run = report["per_seed"]["0"]["open_le_13b"]  # type: ignore[index]
    assert run["static"]["lessons"] == 0 and run["static_all_profiled"]["lessons"] == 0
    assert run["competition_20"]["lessons"] > run["competition_5"]["lessons"] > 0
    assert run["static"]["withheld_share"] == [0.0, 0.0, 0.0]  # never profiled, so never recruited
    assert run["static_all_profiled"]["withheld_share"][0] > 0.0  # profiled from the start
    share = run["competition_20"]["withheld_share"]
    assert share[0] == 0.0 and share[-1] > 0.0  # registered after the first third, then learned


def test_each_learner_is_the_mean_over_its_draws(report: dict[str, object]) -> None:
    run = report["per_seed"]["0"]["open_le_13b"]  # type: ignore[index]
    assert report["draws"] == 2
    for name in ("competition_5", "competition_20", "feedback_10"):
        draws = run[name]["accuracy_per_draw"]
        assert len(draws) == 2 and all(len(d) == 3 for d in draws)
        assert run[name]["accuracy"] == pytest.approx([(a + b) / 2 for a, b in zip(*draws, strict=True)], abs=1e-4)


def test_the_printout_names_each_pool_and_the_best_learners_gain(
        report: dict[str, object], load_bench: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]) -> None:
    load_bench("learning").show(report)
    out = capsys.readouterr().out
    assert "## pool open_le_13b" in out and "## pool all" in out
    assert f"best learner ({report['best_learner']}): {report['last_segment_gain_open']:+.2f}" in out
