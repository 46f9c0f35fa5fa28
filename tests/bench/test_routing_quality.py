"""The routing-quality benchmark end to end on a small slice of the real recording."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from skills.embedder import get_embedder

MODELS = ["Llama-2-7b-hf", "Meta-Llama-3_1-8B-Instruct", "mathstral-7B", "gemini-1.5-pro-002"]
HEADLINE = ["best_single", "random_k3", "symbolic_moe_k3", "category_k3", "router_k3", "oracle"]


@pytest.fixture(scope="module")
def bench(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("routing_quality")


@pytest.fixture(scope="module")
def folder(slice_recording: Callable[[Path, Sequence[str], int], Path],
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    return slice_recording(tmp_path_factory.mktemp("bench"), MODELS, 6)


def test_json_report_has_every_pool_and_method(
    bench: ModuleType, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(folder), "--json", "--seed", "7", "--test-size", "0.5", "--no-cache"]
    assert bench.main(argv, embedder=get_embedder(), skill_embedder=get_embedder()) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["pools"]) == {"all", "open_le_13b"} and report["seeds"] == [7]
    run = report["per_seed"]["7"]
    for pool in run["pools"].values():
        assert (pool["n_test"], pool["seed"]) == (42, 7)  # 14 categories × round(6 × 0.5)
        assert all(0.0 <= pool[key] <= pool["oracle"] for key in HEADLINE)
    assert run["details"]["open_le_13b"]["models"] == MODELS[:3]
    assert run["details"]["all"]["best_single"] == "gemini-1.5-pro-002"
    assert report["pools"]["all"]["router_k3"] == run["pools"]["all"]["router_k3"]  # one seed: its own mean


def test_several_seeds_print_each_figure_and_the_mean(
    bench: ModuleType, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(folder), "--json", "--seeds", "3", "4", "--no-cache"]
    assert bench.main(args, embedder=get_embedder(), skill_embedder=get_embedder()) == 0
    report = json.loads(capsys.readouterr().out)
    gain = report["gain_router_k3"]["open_le_13b"]
    each = [report["per_seed"][s]["pools"]["open_le_13b"] for s in ("3", "4")]
    assert gain["per_seed"] == pytest.approx([100 * (p["router_k3"] - p["best_single"]) for p in each], abs=0.02)
    assert gain["mean"] == pytest.approx(sum(gain["per_seed"]) / 2, abs=0.01)
    # two splits of many: the sample SD (n-1), |a-b|/√2, not the population one (|a-b|/2)
    assert gain["std"] == pytest.approx(abs(gain["per_seed"][0] - gain["per_seed"][1]) / 2**0.5, abs=0.02)
    for (low, high), g in zip(gain["per_seed_ci95"], gain["per_seed"], strict=True):
        assert low <= g <= high
    mean = report["pools"]["open_le_13b"]["router_k3"]
    assert mean == pytest.approx((each[0]["router_k3"] + each[1]["router_k3"]) / 2, abs=1e-4)


def test_tables_name_seed_split_pool_and_aggregation(
    bench: ModuleType, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(folder), "--seed", "7", "--no-cache"]
    assert bench.main(args, embedder=get_embedder(), skill_embedder=get_embedder()) == 0
    out = capsys.readouterr().out
    assert "seeds 7" in out and "# seed 7" in out and "router k=3 minus best single" in out
    assert "42 profiling, 42 test" in out
    assert "profile-weighted voting" in out
    assert "## pool open_le_13b: 3 experts: Llama-2-7b-hf, Meta-Llama-3_1-8B-Instruct, mathstral-7B" in out
    assert "accuracy vs expert calls" in out and "accuracy vs cost" in out


def test_the_paired_bootstrap_interval_holds_the_gain_and_is_seeded(bench: ModuleType) -> None:
    diff = np.array([1.0] * 30 + [-1.0] * 10 + [0.0] * 60)  # router right on 30, single on 10: +20 points
    low, high = bench.paired_bootstrap(diff, seed=0)
    assert 5.0 < low < 20.0 < high < 35.0
    assert bench.paired_bootstrap(diff, seed=0) == (low, high)
    assert bench.paired_bootstrap(np.zeros(50), seed=1) == (0.0, 0.0)


def test_symbolic_moe_reads_skills_as_the_service_does_unless_a_kind_is_forced(bench: ModuleType) -> None:
    """The service reads skills with the transformer under the symbolic router (static reads a
    skill's name much worse); the k-NN router keeps its own kind."""
    assert bench.skill_kind(bench.parse_args(["data"]).embedding) == "transformer"
    assert bench.skill_kind(bench.parse_args(["data", "--embedding", "static"]).embedding) == "static"
