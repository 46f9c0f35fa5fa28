"""The one place that wires skills → routing → budgets → scheduling → experts → aggregation.

`route` reads a batch of admitted queries: each text is embedded once, and that one embedding
both finds the query's skills and places it for the router; a query with a latency or energy
budget gets the exact best subset within it (MoE^2, `budgets.planner`) instead of the router's
draws. `answer` runs decisions already made: every expert generation of the batch grouped by
base model (each loaded at most once), then every aggregation on the aggregator, which the
planner keeps resident by running its model last (or a weighted vote where no LLM aggregates).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from experts.backend import BackendError
from experts.traits import check_prompt, prompt_scope
from experts.types import BaseModelSpec, Generation
from orchestrator.aggregation.prompt import AggregationMode, aggregation_prompt
from orchestrator.aggregation.vote import vote_answer
from orchestrator.budgets.planner import BudgetPlan, BudgetPlanner, PoolView, TokenLimits, measured
from orchestrator.budgets.solver import InfeasibleBudget
from orchestrator.domain import (
    Answer,
    Ask,
    Decision,
    ExpertScore,
    NoExperts,
    Outcome,
    Role,
    SkillMatch,
    Unanswerable,
    UnknownExpert,
)
from orchestrator.probe import NULL_PROBE, Probe
from orchestrator.routing.recruit import recruit
from orchestrator.routing.snapshot import PoolSnapshot
from orchestrator.scheduling.executor import Executor, execute
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker
from skills.embedder import Embedder
from skills.vocabulary import SkillMatch as VocabularyMatch

DIRECT = "direct"  # the router name of a query that named its expert


@dataclass(frozen=True)
class GenerationLimits:
    expert_max_tokens: int = 96
    aggregator_max_tokens: int = 96


class Pipeline:
    def __init__(self, worker: DeviceWorker, embedder: Embedder, planner: BudgetPlanner | None = None,
                 limits: GenerationLimits | None = None, skills_per_query: int = 3, executor: Executor = execute,
                 aggregation: AggregationMode = "llm", probe: Probe = NULL_PROBE):
        self.worker, self.embedder, self.executor, self.probe = worker, embedder, executor, probe
        self.planner = planner or BudgetPlanner()
        self.limits = limits or GenerationLimits()
        self.skills_per_query = skills_per_query
        self.aggregation = aggregation  # "vote": no LLM reads the answers (replay pools)

    # ------------------------------------------------------------------ routing

    def route(self, pool: PoolSnapshot, asks: Sequence[Ask]) -> list[Decision]:
        """A decision for every query, generating nothing; raises a `QueryError` naming the
        first query that cannot be taken (no expert, none able to answer it, no budget fit)."""
        started = time.perf_counter()
        if not pool.experts:
            raise NoExperts("no profiled expert in the pool yet")
        routed = [i for i, a in enumerate(asks) if a.expert is None]
        texts = [asks[i].text for i in routed]
        embeddings = self.embedder.encode(texts)
        skills = pool.vocabulary.nearest_for_embeddings(texts, embeddings, self.skills_per_query)
        found = {i: (emb, matches) for i, emb, matches in zip(routed, embeddings, skills, strict=True)}
        decisions = [self._decide(pool, i, a, *found.get(i, (None, []))) for i, a in enumerate(asks)]
        self.probe.routed(decisions, time.perf_counter() - started)
        return decisions

    def _decide(self, pool: PoolSnapshot, index: int, ask: Ask, emb: np.ndarray | None,
                matches: Sequence[VocabularyMatch]) -> Decision:
        eligible = self._eligible(pool, index, ask)
        seed = ask.seed if ask.seed is not None else random.randrange(2**31)
        if ask.expert is not None:
            return Decision.made(DIRECT, "topk", seed, [], [], [ask.expert], None)
        skills = [SkillMatch(keyword=m.keyword, skill=m.skill, similarity=m.similarity) for m in matches]
        scores = [s for s in pool.router.score([m.skill for m in skills], emb) if s.name in eligible]
        if ask.budget is not None:
            plan = self._plan(pool, index, ask, scores)
            return Decision.made(pool.router.name, "budget", seed, skills, scores, plan.chosen, pool.aggregator,
                                 plan.record())
        mode = ask.mode or pool.router.preferred_mode
        chosen = recruit(scores, ask.k, mode, random.Random(seed))
        return Decision.made(pool.router.name, mode, seed, skills, scores, chosen, pool.aggregator)

    def _eligible(self, pool: PoolSnapshot, index: int, ask: Ask) -> set[str]:
        """The experts whose backend can answer this query (`experts.traits.check_prompt`)."""
        names = [ask.expert] if ask.expert is not None else list(pool.experts)
        if ask.expert is not None and ask.expert not in pool.experts:
            raise UnknownExpert(f"the model {ask.expert!r} does not exist; GET /v1/models lists them", index, "model")
        verdicts: dict[str, str | None] = {}
        for name in names:
            base = pool.experts[name].base
            if (scope := prompt_scope(base)) not in verdicts:
                verdicts[scope] = _refusal(base, ask.text)
        eligible = {n for n in names if verdicts[prompt_scope(pool.experts[n].base)] is None}
        if not eligible:
            reason = next(v for v in verdicts.values() if v is not None)
            raise Unanswerable(reason, index)
        return eligible

    def _plan(self, pool: PoolSnapshot, index: int, ask: Ask, scores: list[ExpertScore]) -> BudgetPlan:
        assert ask.budget is not None
        view = PoolView(pool.experts, pool.aggregator, pool.router.calibrated, self.aggregation)
        tokens = TokenLimits(self.limits.expert_max_tokens, self.limits.aggregator_max_tokens)
        try:
            return self.planner.plan(view, ask.text, scores, ask.budget, ask.k, tokens)
        except InfeasibleBudget as exc:
            exc.index = index
            raise

    # ------------------------------------------------------------------ answering

    def answer(self, pool: PoolSnapshot, asks: Sequence[Ask], decisions: Sequence[Decision]) -> list[Outcome]:
        """Generate batched by model, then aggregate; the decisions were made at admission."""
        started = time.perf_counter()
        outcomes = [Outcome(decision=d) for d in decisions]
        agg_key = pool.experts[pool.aggregator].base.key if pool.aggregator in pool.experts else None
        self._run_experts(pool, asks, outcomes, agg_key)
        self._run_aggregation(pool, asks, outcomes)
        elapsed = time.perf_counter() - started
        for o in outcomes:
            o.latency_s = o.stages_s = elapsed
            if o.decision.budget is not None:
                budget = measured(o.decision.budget, elapsed, self.planner.power_w)
                o.decision = o.decision.model_copy(update={"budget": budget})
        self.planner.observe(pool.experts, [a for o in outcomes for a in o.answers])
        self.probe.answered(outcomes)
        return outcomes

    def _run_experts(self, pool: PoolSnapshot, asks: Sequence[Ask], outcomes: list[Outcome],
                     agg_key: str | None) -> None:
        jobs = []
        for qi, (ask, o) in enumerate(zip(asks, outcomes, strict=True)):
            for j, name in enumerate(o.decision.recruited):
                spec = pool.experts[name]
                req = spec.request(f"{qi}:{j}", ask.text, self.limits.expert_max_tokens)
                # an expert drawn twice answers twice: give the second draw its own sample
                req.sampling = req.sampling.model_copy(update={"seed": (req.sampling.seed or 0) + j})
                jobs.append(Job(req.request_id, spec.base, req))
        gens = self.executor(jobs, self.worker, keep_last=agg_key)
        for qi, o in enumerate(outcomes):
            o.answers = [_answer(n, "expert", gens[f"{qi}:{j}"]) for j, n in enumerate(o.decision.recruited)]
            o.text = o.answers[0].text if o.answers else ""

    def _run_aggregation(self, pool: PoolSnapshot, asks: Sequence[Ask], outcomes: list[Outcome]) -> None:
        todo = [qi for qi, o in enumerate(outcomes) if len(o.answers) >= 2]
        if self.aggregation == "vote":
            for qi in todo:
                _vote(outcomes[qi], pool)
            return
        agg = pool.aggregator
        if not agg or agg not in pool.experts or not todo:
            return
        spec = pool.experts[agg]
        jobs = []
        for qi in todo:
            prompt = aggregation_prompt(asks[qi].text, [a.text for a in outcomes[qi].answers])
            req = spec.request(f"{qi}:agg", prompt, self.limits.aggregator_max_tokens)
            jobs.append(Job(req.request_id, spec.base, req))
        gens = self.executor(jobs, self.worker)
        for qi in todo:
            outcomes[qi].answers.append(_answer(agg, "aggregator", gens[f"{qi}:agg"]))
            outcomes[qi].text = outcomes[qi].answers[-1].text


def _refusal(base: BaseModelSpec, text: str) -> str | None:
    try:
        check_prompt(base, text)
    except BackendError as exc:
        return str(exc)
    return None


def _answer(expert: str, role: Role, g: Generation) -> Answer:
    return Answer(expert=expert, role=role, text=g.text, prompt_tokens=g.prompt_tokens,
                  completion_tokens=g.completion_tokens, latency_s=g.latency_s)


def _vote(o: Outcome, pool: PoolSnapshot) -> None:
    """Aggregate by the router-weighted vote of the answers' letters (no aggregator stage)."""
    result = vote_answer([(a.expert, a.text) for a in o.answers], o.decision.experts, pool.router.reliability)
    o.text = f"Answer: {result.answer}" if result.answer else o.text
