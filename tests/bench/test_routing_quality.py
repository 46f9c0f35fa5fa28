"""The routing-quality benchmark end to end on a small slice of the real recording."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from experts.replay import load_recording, write_recording
from skills.embedder import get_embedder

ROOT = Path(__file__).resolve().parents[2]
REPLAY = ROOT.parent / "shared/data/mmlu_pro_replay"
MODELS = ["Llama-2-7b-hf", "Meta-Llama-3_1-8B-Instruct", "mathstral-7B", "gemini-1.5-pro-002"]
HEADLINE = ["best_single", "random_k3", "symbolic_moe_k3", "category_k3", "router_k3", "oracle"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routing_quality", ROOT / "bench" / "routing_quality.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REPLAY.is_dir():
        pytest.skip(f"the replay corpus is not at {REPLAY}")
    real = load_recording(REPLAY)
    seen: Counter[str] = Counter()
    ids = [q for q, x in real.questions.items() if (seen.update([x.category]) or seen[x.category] <= 6)]
    answers = {m: {q: real.answer(m, q) for q in ids} for m in MODELS}
    return write_recording(tmp_path_factory.mktemp("bench"), [real.questions[q] for q in ids], answers)


def test_json_report_has_every_pool_and_method(
    bench: ModuleType, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(folder), "--json", "--seed", "7", "--test-size", "0.5", "--no-cache"]
    assert bench.main(argv, embedder=get_embedder()) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["pools"]) == {"all", "open_le_13b"}
    for pool in report["pools"].values():
        assert (pool["n_test"], pool["seed"]) == (42, 7)  # 14 categories × round(6 × 0.5)
        assert all(0.0 <= pool[key] <= pool["oracle"] for key in HEADLINE)
    assert report["details"]["open_le_13b"]["models"] == MODELS[:3]
    assert report["details"]["all"]["best_single"] == "gemini-1.5-pro-002"


def test_tables_name_seed_split_pool_and_aggregation(
    bench: ModuleType, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main([str(folder), "--seed", "7", "--no-cache"], embedder=get_embedder()) == 0
    out = capsys.readouterr().out
    assert "seed 7" in out and "42 profiling, 42 test" in out
    assert "profile-weighted voting" in out
    assert "## pool open_le_13b: 3 experts: Llama-2-7b-hf, Meta-Llama-3_1-8B-Instruct, mathstral-7B" in out
    assert "accuracy vs expert calls" in out and "accuracy vs cost" in out
