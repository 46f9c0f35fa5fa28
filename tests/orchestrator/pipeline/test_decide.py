"""Recruitment's mode: the pool's own (`recruit:` in its file) for a query that names none, the
router's preferred one where the pool names none either, and a query's own above both; and the
chance level a calibrated router weighs a query against; and the tokens a budget is planned at."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec, SamplingParams
from orchestrator.budgets.solver import InfeasibleBudget
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, ExpertScore, QueryBudget
from orchestrator.routing.router import Router
from orchestrator.settings import BudgetSettings
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

DEVICES_FILE = Path(__file__).resolve().parents[3] / "experts" / "devices.yaml"
EXPERTS = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
           mock_expert("gamma", "m2")]


def modes(tmp_path: Path, embedder: Embedder, recruit: str | None) -> list[tuple[str, list[str], list[str]]]:
    pool = small_pool(EXPERTS).model_copy(update={"recruit": recruit})
    c = SkillRoute(quiet_settings(tmp_path), pool, factory=mock_or_real, embedder=embedder)
    c.bootstrap()
    try:
        asks = [Ask(text="What is 6*7?", k=2, seed=3), Ask(text="What is 6*7?", k=2, seed=3, mode="sample")]
        return [(d.mode, d.recruited, [s.name for s in d.experts]) for d in c.pipeline.route(c.pool.snapshot, asks)]
    finally:
        c.close()


def test_the_pool_s_recruit_mode_is_what_a_query_naming_none_gets(tmp_path: Path, embedder: Embedder) -> None:
    (mode, recruited, ranked), (named, _, _) = modes(tmp_path, embedder, "topk")
    assert (mode, recruited) == ("topk", ranked[:2])
    assert named == "sample"


def test_without_one_the_router_s_preferred_mode_recruits(tmp_path: Path, embedder: Embedder) -> None:
    (mode, _, _), _ = modes(tmp_path, embedder, None)
    assert mode == "sample"  # the Symbolic-MoE router's, the service's default router


class OptionsSeen:
    """The pool's real router, noting the option counts each batch is scored with."""

    def __init__(self, router: Router):
        self.router, self.seen = router, list[list[int]]()

    def __getattr__(self, name: str) -> object:
        return getattr(self.router, name)

    def score_batch(self, skills: Sequence[Sequence[str]], embeddings: np.ndarray,
                    n_options: Sequence[int] | None = None) -> list[list[ExpertScore]]:
        self.seen.append(list(n_options or []))
        return self.router.score_batch(skills, embeddings, n_options)


def test_each_query_is_scored_with_its_own_option_count(tmp_path: Path, embedder: Embedder) -> None:
    """The chance level a calibrated router weighs against (tests/orchestrator/routing/
    test_knn_router.py): four lettered options, or none for free text."""
    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS).model_copy(update={"router": "knn"}),
                   factory=mock_or_real, embedder=embedder)
    c.bootstrap()
    try:
        spy = OptionsSeen(c.pool.snapshot.router)
        lettered = "Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nReply with 'Answer: <letter>'."
        asks = [Ask(text=lettered, k=2, seed=3), Ask(text="Which is a prime: 4, 6, 7 or 9?", k=2, seed=3)]
        decisions = c.pipeline.route(replace(c.pool.snapshot, router=spy), asks)  # type: ignore[arg-type]
    finally:
        c.close()
    assert spy.seen == [[4, 0]] and [d.router for d in decisions] == ["knn", "knn"]


def test_a_budget_is_planned_at_the_tokens_the_query_and_the_expert_allow(tmp_path: Path, embedder: Embedder) -> None:
    """A query's own `max_tokens` and an expert's `sampling.max_tokens` cap its replies, so they
    cap what its budget is planned at: a latency only the short reply meets was a 422 before."""
    devices = tmp_path / "devices.yaml"
    devices.write_text(DEVICES_FILE.read_text() + "workers:\n  - {name: w1, device: local-cpu, memory_gb: 4}\n")
    terse = ExpertSpec(name="terse", base=BaseModelSpec(kind="mock", source="m2"),
                       sampling=SamplingParams(max_tokens=4), placement=ExpertPlacement(worker="w1", params_b=0.5))
    wordy = ExpertSpec(name="wordy", base=BaseModelSpec(kind="mock", source="m1"),
                       placement=ExpertPlacement(worker="w1", params_b=0.5))
    settings = quiet_settings(tmp_path / "data", budgets=BudgetSettings(devices_file=str(devices)))
    c = SkillRoute(settings, small_pool([wordy, terse]), factory=mock_or_real, embedder=embedder)
    c.bootstrap()
    try:
        tight = QueryBudget(latency_s=0.5, energy_j=None)  # 4 tokens fit in it, the pool's 96 do not
        default = c.pipeline.route(c.pool.snapshot, [Ask(text="What is 2+2?", k=2, budget=tight)])
        assert default[0].recruited == ["terse"]  # its own 4 tokens fit; wordy's 96 do not
        short = Ask(text="What is 2+2?", budget=tight, max_tokens=4, expert="wordy")
        named = c.pipeline.route(c.pool.snapshot, [short])
        assert named[0].budget is not None and named[0].recruited == ["wordy"]
        with pytest.raises(InfeasibleBudget, match="wordy"):  # a named expert meets the budget too
            c.pipeline.route(c.pool.snapshot, [Ask(text="What is 2+2?", budget=tight, expert="wordy")])
    finally:
        c.close()
