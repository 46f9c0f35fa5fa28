"""Recruitment's mode: the pool's own (`recruit:` in its file) for a query that names none, the
router's preferred one where the pool names none either, and a query's own above both."""

from __future__ import annotations

from pathlib import Path

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

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
