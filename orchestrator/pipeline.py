"""The one place that wires skills → routing → scheduling → experts → aggregation.

A batch is routed whole first, then every expert generation of the batch runs grouped by base
model (each loaded at most once), then every aggregation runs on the aggregator, which the
planner kept resident by running its model last.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from experts.types import Generation
from orchestrator.aggregation import aggregation_prompt, final_answer
from orchestrator.observability.probe import NULL_PROBE, Probe
from orchestrator.pool import PoolSnapshot
from orchestrator.routing.recruit import ExpertScore, RecruitMode, recruit
from orchestrator.scheduling.executor import Executor, execute
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker
from skills.embedder import Embedder
from skills.vocabulary import SkillMatch


class NoExpertsError(RuntimeError):
    """The pool has no profiled expert to recruit yet."""


@dataclass(frozen=True)
class QueryInput:
    text: str
    k: int = 3
    mode: RecruitMode = "sample"
    seed: int | None = None


@dataclass
class Decision:
    skills: list[SkillMatch]
    scores: list[ExpertScore]
    recruited: list[str]
    aggregator: str | None
    router: str
    mode: RecruitMode
    seed: int


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
                 skills_per_query: int = 3, executor: Executor = execute):
        self.worker, self.embedder, self.executor = worker, embedder, executor
        self.limits = limits or GenerationLimits()
        self.skills_per_query = skills_per_query

    def route(self, pool: PoolSnapshot, inputs: Sequence[QueryInput]) -> list[Decision]:
        """Skills, scores and recruits for every query, without generating anything."""
        if not pool.experts:
            raise NoExpertsError("no profiled expert in the pool yet")
        started = time.perf_counter()
        texts = [q.text for q in inputs]
        matches = pool.vocabulary.nearest_for_texts(texts, self.skills_per_query)
        embeddings = self.embedder.encode(texts)
        decisions = [self._decide(pool, q, m, e) for q, m, e in zip(inputs, matches, embeddings, strict=True)]
        self.probe.routed(decisions, time.perf_counter() - started)
        return decisions

    def _decide(self, pool: PoolSnapshot, q: QueryInput, skills: list[SkillMatch], emb: np.ndarray) -> Decision:
        seed = q.seed if q.seed is not None else random.randrange(2**31)
        scores = pool.router.score([m.skill for m in skills], emb)
        chosen = recruit(scores, q.k, q.mode, random.Random(seed))
        return Decision(skills, scores, chosen, pool.aggregator, pool.router.name, q.mode, seed)

    def answer(self, pool: PoolSnapshot, inputs: Sequence[QueryInput],
               decisions: Sequence[Decision] | None = None) -> list[Outcome]:
        """Route (unless given decisions), generate batched by model, then aggregate."""
        started = time.perf_counter()
        decisions = list(decisions) if decisions is not None else self.route(pool, inputs)
        outcomes = [Outcome(d) for d in decisions]
        agg_key = pool.experts[pool.aggregator].base.key if pool.aggregator else None
        self._run_experts(pool, inputs, outcomes, agg_key)
        self._run_aggregation(pool, inputs, outcomes)
        for o in outcomes:
            o.latency_s = time.perf_counter() - started
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
