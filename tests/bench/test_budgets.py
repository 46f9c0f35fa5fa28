"""Part (c) of the budget bench on a small synthetic recording: curves per placement and method."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from experts.replay import RecordedQuestion, write_recording
from skills.embedder import get_embedder

SMALL = ["Llama-2-7b-hf", "Mistral-7B-v0.1"]  # open, <= 13B: edge boxes in the edge and mixed placements
LARGE = ["Llama-2-70b-hf", "gemini-1.5-pro-002"]  # servers only
ACCURACY = {"Llama-2-7b-hf": 0.35, "Mistral-7B-v0.1": 0.45, "Llama-2-70b-hf": 0.6, "gemini-1.5-pro-002": 0.85}
TOPICS = {"math": "What is the derivative of x^{} at x = {}?", "law": "Which court hears appeal number {} of {}?",
          "biology": "How many chromosomes does species {} have in cell type {}?"}


@pytest.fixture(scope="module")
def budgets(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("budgets")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 questions in three categories; each model right with its own probability, else a wrong letter."""
    rng = random.Random(4)
    questions, answers = [], {m: {} for m in ACCURACY}  # type: ignore[var-annotated]
    for i in range(60):
        category = list(TOPICS)[i % 3]
        gold = rng.choice("ABCD")
        qid = f"q{i}"
        questions.append(RecordedQuestion(qid, category, TOPICS[category].format(i, i * 7), tuple("wxyz"), gold))
        for model, p in ACCURACY.items():
            answers[model][qid] = gold if rng.random() < p else rng.choice([x for x in "ABCD" if x != gold])
    return write_recording(tmp_path_factory.mktemp("replay"), questions, answers)


@pytest.fixture(scope="module")
def result(budgets: ModuleType, folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = budgets.replay_accuracy_vs_budget(folder, 25, 3, None, get_embedder())
    return out


def test_placements_put_small_open_models_on_the_edge_and_the_rest_on_servers(result: dict[str, Any]) -> None:
    p = result["placements"]
    assert p["edge"]["models"] == {m: "jetson-agx-orin" for m in SMALL}
    assert set(p["server"]["models"].values()) == {"h100-server"} and len(p["server"]["models"]) == 4
    assert p["mixed"]["models"] == {**{m: "jetson-agx-orin" for m in SMALL}, **{m: "h100-server" for m in LARGE}}
    assert result["questions"] == 25


def test_exact_never_breaks_a_budget_and_predicts_at_least_the_greedy_quality(result: dict[str, Any]) -> None:
    for placement in result["placements"].values():
        for sweep in ("energy", "latency"):
            for row in placement[sweep].values():
                ex, gr = row["exact"], row["greedy"]
                assert ex["violations"] == 0 == gr["violations"]
                assert ex["answered"] == gr["answered"]  # both answer whenever any expert fits
                assert ex["predicted_quality"] >= gr["predicted_quality"] - 1e-9


def test_more_budget_never_lowers_the_exact_predicted_quality(result: dict[str, Any]) -> None:
    for name, placement in result["placements"].items():
        quality = [row["exact"]["predicted_quality"] for row in placement["energy"].values()]
        assert quality == sorted(quality)
        assert name == "edge" or quality[-1] > quality[0]  # two voters predict no more than their best


def test_budget_blind_top3_breaks_tight_budgets_and_ignores_them(result: dict[str, Any]) -> None:
    server = list(result["placements"]["server"]["energy"].values())
    assert server[0]["top3"]["violations"] == 1.0 and len({r["top3"]["accuracy"] for r in server}) == 1
    edge = list(result["placements"]["edge"]["energy"].values())
    assert edge[0]["top3"]["violations"] == 1.0 and edge[-1]["top3"]["violations"] == 0.0


def test_the_edge_answers_where_servers_cost_too_much_energy(result: dict[str, Any]) -> None:
    lowest = f"{result['energy_levels_j'][0]:g}"
    p = result["placements"]
    assert p["server"]["energy"][lowest]["exact"]["answered"] == 0
    assert p["edge"]["energy"][lowest]["exact"]["answered"] > 0
    assert p["mixed"]["energy"][lowest]["exact"]["answered"] == p["edge"]["energy"][lowest]["exact"]["answered"]


def test_report_prints_a_curve_per_placement(budgets: ModuleType, result: dict[str, Any],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    budgets.report_replay(result)
    out = capsys.readouterr().out
    for name in ("placement edge", "placement server", "placement mixed", "energy J", "latency s", "top-3"):
        assert name in out
