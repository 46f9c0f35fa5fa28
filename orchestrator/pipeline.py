"""The one place that wires skills → routing → scheduling → experts → aggregation.

A batch is routed whole first, then every expert generation of the batch runs grouped by base
model (each loaded at most once), then every aggregation runs on the aggregator, which the
planner kept resident by running its model last. A query with a latency or energy budget
recruits the exact best subset within it instead (`routing/budget_plan.py`, MoE^2).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from experts.backend import BackendError
from experts.replay import load_recording
from experts.types import Generation
from orchestrator.aggregation import AggregationMode, aggregation_prompt, final_answer, vote_answer
from orchestrator.observability.probe import NULL_PROBE, Probe
from orchestrator.pool import PoolSnapshot
from orchestrator.routing.budget_plan import BudgetPlan, BudgetPlanner, PoolView, QueryBudget, TokenLimits
from orchestrator.routing.recruit import ExpertScore, RecruitMode, recruit
from orchestrator.routing.voting import AnswerReliability
from orchestrator.scheduling.executor import Executor, execute
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker
from skills.embedder import Embedder
from skills.vocabulary import SkillMatch


class NoExpertsError(RuntimeError):
    """The pool has no profiled expert to recruit yet."""


class NotRecorded(ValueError):
    """A query a replay pool cannot answer: its recording holds no such question."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class QueryInput:
    text: str
    k: int = 3
    mode: RecruitMode | None = None  # None: the router's preferred mode
    seed: int | None = None
    budget: QueryBudget | None = None  # set: recruit the best subset within it (k is its size cap)


@dataclass
class Decision:
    skills: list[SkillMatch]
    scores: list[ExpertScore]
    recruited: list[str]
    aggregator: str | None
    router: str
    mode: RecruitMode | Literal["budget"]
    seed: int
    plan: BudgetPlan | None = None

    @property
    def budget(self) -> QueryBudget | None:
        return self.plan.budget if self.plan else None

    @property
    def predicted_latency_s(self) -> float | None:
        return self.plan.decision.latency_s if self.plan else None

    @property
    def predicted_energy_j(self) -> float | None:
        return self.plan.decision.energy_j if self.plan else None


@dataclass
class Answer:
    expert: str
    role: str  # expert | aggregator
    generation: Generation


@dataclass
class Outcome:
    decision: Decision
    answers: list[Answer] = field(default_factory=list)
    text: str = ""
    latency_s: float = 0.0
    stages_s: float = 0.0  # wall time of the batch's expert and aggregation stages

    @property
    def answer(self) -> str:
        return final_answer(self.text)


@dataclass
class GenerationLimits:
    expert_max_tokens: int = 96
    aggregator_max_tokens: int = 96


class Pipeline:
    probe: Probe = NULL_PROBE  # the app's metrics, once instrumented

    def __init__(self, worker: DeviceWorker, embedder: Embedder, limits: GenerationLimits | None = None,
                 skills_per_query: int = 3, executor: Executor = execute, aggregation: AggregationMode = "llm"):
        self.worker, self.embedder, self.executor = worker, embedder, executor
        self.limits = limits or GenerationLimits()
        self.skills_per_query = skills_per_query
        self.aggregation = aggregation  # "vote": no LLM reads the answers (replay pools)
        self.planner = BudgetPlanner()

    def route(self, pool: PoolSnapshot, inputs: Sequence[QueryInput]) -> list[Decision]:
        """Skills, scores and recruits for every query, without generating anything."""
        started = time.perf_counter()
        decisions = self._route(pool, inputs)
        self.probe.routed(decisions, time.perf_counter() - started)
        return decisions

    def check_recorded(self, pool: PoolSnapshot, inputs: Sequence[QueryInput]) -> None:
        """Raise NotRecorded for a query that a replay expert of the pool could not find."""
        folders = {s.base.source for s in pool.experts.values() if s.base.kind == "replay"}
        for i, q in enumerate(inputs):
            for folder in folders:
                try:
                    load_recording(folder).find_question(q.text)
                except BackendError as exc:
                    raise NotRecorded(i, str(exc)) from exc

    def check_budgets(self, pool: PoolSnapshot, inputs: Sequence[QueryInput]) -> None:
        """Raise InfeasibleBudget for a budgeted query no expert fits, before any work is stored."""
        budgeted = [q for q in inputs if q.budget is not None]
        if budgeted:
            self._route(pool, budgeted)

    def _route(self, pool: PoolSnapshot, inputs: Sequence[QueryInput]) -> list[Decision]:
        if not pool.experts:
            raise NoExpertsError("no profiled expert in the pool yet")
        texts = [q.text for q in inputs]
        matches = pool.vocabulary.nearest_for_texts(texts, self.skills_per_query)
        embeddings = self.embedder.encode(texts)
        return [self._decide(pool, q, m, e) for q, m, e in zip(inputs, matches, embeddings, strict=True)]

    def _decide(self, pool: PoolSnapshot, q: QueryInput, skills: list[SkillMatch], emb: np.ndarray) -> Decision:
        seed = q.seed if q.seed is not None else random.randrange(2**31)
        scores = pool.router.score([m.skill for m in skills], emb)
        if q.budget is not None:
            plan = self._plan(pool, q, scores)
            return Decision(skills, scores, list(plan.chosen), pool.aggregator, pool.router.name, "budget", seed, plan)
        mode = q.mode or pool.router.preferred_mode
        chosen = recruit(scores, q.k, mode, random.Random(seed))
        return Decision(skills, scores, chosen, pool.aggregator, pool.router.name, mode, seed)

    def _plan(self, pool: PoolSnapshot, q: QueryInput, scores: list[ExpertScore]) -> BudgetPlan:
        assert q.budget is not None
        view = PoolView(pool.experts, pool.aggregator, pool.router.name, self.aggregation)
        tokens = TokenLimits(self.limits.expert_max_tokens, self.limits.aggregator_max_tokens)
        return self.planner.plan(view, q.text, scores, q.budget, q.k, tokens)

    def answer(self, pool: PoolSnapshot, inputs: Sequence[QueryInput],
               decisions: Sequence[Decision] | None = None) -> list[Outcome]:
        """Route (unless given decisions), generate batched by model, then aggregate."""
        started = time.perf_counter()
        decisions = list(decisions) if decisions is not None else self.route(pool, inputs)
        outcomes = [Outcome(d) for d in decisions]
        agg_key = pool.experts[pool.aggregator].base.key if pool.aggregator else None
        stages = time.perf_counter()
        self._run_experts(pool, inputs, outcomes, agg_key)
        self._run_aggregation(pool, inputs, outcomes)
        done = time.perf_counter()
        for o in outcomes:
            o.latency_s, o.stages_s = done - started, done - stages
        self.planner.observe(pool.experts, [(a.expert, a.generation) for o in outcomes for a in o.answers])
        self.probe.answered(outcomes)
        return outcomes

    def _run_experts(self, pool: PoolSnapshot, inputs: Sequence[QueryInput], outcomes: list[Outcome],
                     agg_key: str | None) -> None:
        jobs = []
        for qi, (q, o) in enumerate(zip(inputs, outcomes, strict=True)):
            for j, name in enumerate(o.decision.recruited):
                spec = pool.experts[name]
                req = spec.request(f"{qi}:{j}", q.text, self.limits.expert_max_tokens)
                # an expert drawn twice answers twice: give the second draw its own sample
                req.sampling = req.sampling.model_copy(update={"seed": (req.sampling.seed or 0) + j})
                jobs.append(Job(req.request_id, spec.base, req))
        gens = self.executor(jobs, self.worker, keep_last=agg_key)
        for qi, o in enumerate(outcomes):
            o.answers = [Answer(n, "expert", gens[f"{qi}:{j}"]) for j, n in enumerate(o.decision.recruited)]
            o.text = o.answers[0].generation.text if o.answers else ""

    def _run_aggregation(self, pool: PoolSnapshot, inputs: Sequence[QueryInput], outcomes: list[Outcome]) -> None:
        if self.aggregation == "vote":
            for o in outcomes:
                _vote(o, pool.router.reliability)
            return
        agg = pool.aggregator
        todo = [qi for qi, o in enumerate(outcomes) if len(o.answers) >= 2]
        if not agg or not todo:
            return
        spec = pool.experts[agg]
        jobs = []
        for qi in todo:
            prompt = aggregation_prompt(inputs[qi].text, [a.generation.text for a in outcomes[qi].answers])
            req = spec.request(f"{qi}:agg", prompt, self.limits.aggregator_max_tokens)
            jobs.append(Job(req.request_id, spec.base, req))
        gens = self.executor(jobs, self.worker)
        for qi in todo:
            gen = gens[f"{qi}:agg"]
            outcomes[qi].answers.append(Answer(agg, "aggregator", gen))
            outcomes[qi].text = gen.text


def _vote(o: Outcome, reliability: AnswerReliability | None) -> None:
    """Aggregate by the router-weighted vote of the answers' letters (no aggregator stage)."""
    if len(o.answers) >= 2:
        result = vote_answer([(a.expert, a.generation.text) for a in o.answers], o.decision.scores, reliability)
        o.text = f"Answer: {result.answer}" if result.answer else o.text
