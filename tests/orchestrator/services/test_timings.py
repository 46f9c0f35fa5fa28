"""A restart keeps what the budgets learned of this machine's speed: the stored runs of each
local model, fed back in the order they ran, give the planner the correction it had (the real
llama.cpp restart: tests/orchestrator/api/test_budgets_real.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from experts.types import BaseModelSpec, ExpertSpec, Generation
from orchestrator.budgets.planner import BudgetPlanner, site
from orchestrator.domain import Answer, Ask, Decision, Outcome
from orchestrator.services.timings import restore_timings
from orchestrator.store.db import Database, migrate
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.queries import QueryRepository
from orchestrator.store.repositories.validation import Graded, ValidationRepository

QWEN = BaseModelSpec(kind="llamacpp", source="package:qwen2.5-coder-0.5b-instruct")
SMOL = BaseModelSpec(kind="llamacpp", source="package:smollm2-135m-instruct")
EXPERTS = [ExpertSpec(name="qwen-a", base=QWEN, system_prompt="maths"), ExpertSpec(name="qwen-b", base=QWEN),
           ExpertSpec(name="smol", base=SMOL), ExpertSpec(name="recorded", base=BaseModelSpec(kind="mock", source="m"))]
SITES = {e.name: site(e) for e in EXPERTS}
PLACEMENT = {e.name: "cpu" for e in EXPERTS}  # a worker the deployment does not declare: costed as placed


def reply(rng: random.Random, i: int) -> Generation:
    """A run whose mix of reading and writing varies, so the planner splits the two apart."""
    prompt, out = rng.randint(20, 400), rng.randint(1, 64)
    return Generation(request_id=str(i), text="A", prompt_tokens=prompt, completion_tokens=out,
                      latency_s=rng.uniform(0.5, 2.0) * (prompt / 900 + out / 40))


@pytest.fixture
def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    return Database(url)


def store_history(db: Database, live: BudgetPlanner, questions: int, queries: int) -> None:
    """Profile every expert on `questions` and answer `queries`, storing each run and telling
    `live` of it as the service does."""
    rng = random.Random(0)
    with db.session() as s:
        ids = {e.name: ExpertRepository(s).add(e).id for e in EXPERTS}
        ValidationRepository(s).add_questions("d", [(f"q{i}", {}, [], None) for i in range(questions)])
        rows = [q.id for q in ValidationRepository(s).questions("d")]
    for e in EXPERTS:
        replies = [reply(rng, i) for i in range(questions)]
        live.record((e, SITES[e.name], g) for g in replies)
        with db.session() as s:
            ValidationRepository(s).save_answers(ids[e.name], [Graded(r, g.text, True, g.prompt_tokens,
                                                                      g.completion_tokens, g.latency_s)
                                                               for r, g in zip(rows, replies, strict=True)])
    for i in range(queries):
        answers = [Answer(expert=e.name, role="expert", **reply(rng, i).model_dump(
            include={"text", "prompt_tokens", "completion_tokens", "latency_s"})) for e in EXPERTS]
        live.observe({e.name: e for e in EXPERTS}, answers, SITES)
        decision = Decision.made("knn", "topk", 4, [], [], [e.name for e in EXPERTS], None)
        with db.session() as s:
            qid = QueryRepository(s).accept(Ask(text=f"q{i}"), decision).id
            QueryRepository(s).finish(qid, Outcome(decision=decision, answers=answers, text="A"))


@pytest.mark.parametrize(("questions", "queries"), [(4, 0), (4, 5), (20, 30)])
def test_a_restarted_planner_costs_each_local_model_as_the_running_one_did(
        db: Database, questions: int, queries: int) -> None:
    live = BudgetPlanner()
    store_history(db, live, questions, queries)
    restarted = BudgetPlanner()
    fed = restore_timings(db, restarted, PLACEMENT, {})
    window = restarted.slowdown.window
    # per base model: its profiling runs, then its generations, each up to a window; nothing of
    # the recording's (mock) expert, whose replies are not this machine's
    assert fed == sum(min(n * questions, window) + min(n * queries, window) for n in (2, 1))
    for base in (QWEN, SMOL):
        assert restarted.slowdown.factors(base.key) == live.slowdown.factors(base.key)
        assert restarted.slowdown.factor(base.key) == live.slowdown.factor(base.key)
    assert restarted.slowdown.factors(QWEN.key) is not None


def test_a_planner_that_has_timed_runs_of_its_own_is_left_as_it_is(db: Database) -> None:
    store_history(db, BudgetPlanner(), 4, 2)
    planner = BudgetPlanner()
    planner.record([(EXPERTS[2], SITES["smol"], reply(random.Random(1), 0))])
    before = planner.slowdown.factors(SMOL.key), planner.slowdown.factors(QWEN.key)
    assert restore_timings(db, planner, PLACEMENT, {}) == 0
    assert (planner.slowdown.factors(SMOL.key), planner.slowdown.factors(QWEN.key)) == before


def test_experts_not_placed_are_not_fed(db: Database) -> None:
    store_history(db, BudgetPlanner(), 4, 2)
    planner = BudgetPlanner()
    assert restore_timings(db, planner, {"smol": "cpu"}, {}) == 4 + 2
    device = planner.slowdown.factor()  # smol's runs alone: the qwen model has none of its own
    assert planner.slowdown.factors(QWEN.key) == (device, device) != planner.slowdown.factors(SMOL.key)
