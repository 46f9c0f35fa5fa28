"""Where learning from traffic met its edges: an explored expert is never a stand-in (it would be
scored against its own answer), two new experts are both explored, and the per-minute cap of
competitions and explorations is spent only by queries that are admitted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from experts.factory import make_backend
from experts.mock import MockBackend
from experts.types import BaseModelSpec
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, UnknownExpert
from orchestrator.routing.learning import Lesson
from orchestrator.services.idempotency import Claim
from orchestrator.settings import LearningSettings, Settings
from orchestrator.store.models import LessonRow
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.idempotency import KeyTaken
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, small_pool

QUESTION = "Which gas do plants absorb for photosynthesis?"
EXPERTS = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
           mock_expert("gamma", "m2")]
FAILING: set[str] = set()  # mock bases whose every generation fails


def factory(spec: BaseModelSpec):  # type: ignore[no-untyped-def]
    if spec.kind != "mock":
        return make_backend(spec)
    return MockBackend(spec.key, fault=lambda _: "down" if spec.source in FAILING else None)


def service(data: Path, embedder: Embedder, rate: float, explore: float, per_minute: int = 1000) -> SkillRoute:
    learning = LearningSettings(competition_rate=rate, explore_rate=explore, per_minute=per_minute)
    pool = small_pool(EXPERTS).model_copy(update={"router": "knn"})
    c = SkillRoute(Settings(data_dir=data, learning=learning), pool, factory=factory, embedder=embedder)
    c.start()
    return c


def profiling(c: SkillRoute, *new: tuple[str, str]) -> None:
    """Register new experts (name, mock base) whose profiles are not in yet: they are explored."""
    for name, base in new:
        row = c.experts.register(mock_expert(name, base), profile=False)
        with c.db.session() as s:
            ExpertRepository(s).set_status(row.id, "profiling")
    c.pool.refresh()


@pytest.fixture
def exploring(tmp_path: Path, embedder: Embedder) -> Iterator[SkillRoute]:
    c = service(tmp_path, embedder, rate=0.0, explore=1.0)
    yield c
    FAILING.clear()
    c.close()


def test_an_explored_expert_is_no_stand_in_and_alone_teaches_nothing(exploring: SkillRoute) -> None:
    """Every recruited expert fails; the explorer answered as a competitor. It once stood in too,
    answered twice, and its lesson marked it right against the consensus of its lone answer."""
    c = exploring
    profiling(c, ("delta", "m3"))
    FAILING.update({"m1", "m2"})
    query = c.queries.ask([Ask(text=QUESTION, k=1, mode="topk", seed=5)])[0]
    row = c.queries.get(query.id)
    assert {(g.expert, g.role) for g in row.generations if g.expert == "delta"} == {("delta", "competitor")}
    assert row.status == "failed"  # no certain expert answered
    with c.db.session() as s:
        assert s.scalar(select(func.count()).select_from(LessonRow)) == 0
    assert c.pool.evidence_counts()["delta"] == 0


def explored(c: SkillRoute, n: int) -> Counter[str]:
    asks = [Ask(text=f"{QUESTION} ({i})", k=1, seed=i) for i in range(n)]
    return Counter(name for d in c.pipeline.route(c.pool.snapshot, asks) for name in d.competitors)


def test_two_new_experts_are_both_explored_the_least_seen_first(exploring: SkillRoute, embedder: Embedder) -> None:
    """The first by name took every exploration: a second new expert never got its evidence."""
    c = exploring
    profiling(c, ("delta", "m3"), ("epsilon", "m4"))
    assert c.pool.snapshot.uncertain == {"delta", "epsilon"}
    both = explored(c, 40)
    assert set(both) == {"delta", "epsilon"} and min(both.values()) >= 10, both  # ties: by each query's seed
    lesson = Lesson(embedder.encode([QUESTION])[0], (), {"delta": True})
    c.pool.learn([(None, lesson)])  # delta has one mark, epsilon none: epsilon goes first
    assert explored(c, 20) == {"epsilon": 20}


def competing(c: SkillRoute, n: int, start: int = 0) -> int:
    """How many of `n` routed queries won a competition (a slot of the per-minute cap each)."""
    asks = [Ask(text=f"{QUESTION} ({i})", k=1, seed=i) for i in range(start, start + n)]
    return sum(d.competition for d in c.pipeline.route(c.pool.snapshot, asks))


def test_the_cap_is_spent_only_by_queries_that_are_admitted(tmp_path: Path, embedder: Embedder) -> None:
    """Every query competes, ten a minute. A request refused for its last query, its routing
    redone call by call for a group, or its key found taken at storing runs nothing: it once
    spent the slots of the queries before it (twice over for a group)."""
    c = service(tmp_path, embedder, rate=1.0, explore=0.0, per_minute=10)
    good = [Ask(text=f"{QUESTION} [{i}]", k=1, seed=100 + i) for i in range(5)]
    with pytest.raises(UnknownExpert):
        c.pipeline.route(c.pool.snapshot, [*good, Ask(text=QUESTION, expert="nope")])
    routed = c.queries.admission._route_group([good, [Ask(text=QUESTION, expert="nope")]])
    assert not isinstance(routed[0], BaseException) and all(d.competition for d in routed[0][0])
    claim = Claim("anonymous", "k1", "/v1/queries", "x")
    c.queries.admission.admit(good[:1], claim)  # stored with its key: one slot more
    with pytest.raises(KeyTaken):
        c.queries.admission.admit(good[1:], claim)
    assert competing(c, 5) == 4  # 5 + 1 spent before: exactly the admitted ones
    c.close()


def test_a_client_s_fixed_seed_competes_on_its_share_of_queries_not_all_or_none(tmp_path: Path,
                                                                                 embedder: Embedder) -> None:
    """Clients pin `seed` for reproducibility. Drawn by the seed alone, every query of a client
    that pinned one competed (to the per-minute cap) or none did; the same query with the same
    seed still decides alike, so a replay is the same."""
    c = service(tmp_path, embedder, rate=0.25, explore=0.0)
    try:
        for seed in (0, 7, 42):
            asks = [Ask(text=f"What is {i} times {seed + 3}?", k=1, seed=seed) for i in range(200)]
            share = sum(d.competition for d in c.pipeline.route(c.pool.snapshot, asks, dry_run=True)) / 200
            assert 0.15 < share < 0.35, (seed, share)
        again = [Ask(text="What is 2 times 3?", k=1, seed=42)] * 20
        assert len({d.competition for d in c.pipeline.route(c.pool.snapshot, again, dry_run=True)}) == 1
    finally:
        c.close()
