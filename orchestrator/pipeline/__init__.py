"""The one place that wires skills → routing → budgets → scheduling → experts → aggregation.

`route` decides for a batch of admitted queries, generating nothing (`decide`); `answer` runs
decisions already made across the deployment's workers (`batch`): every expert generation on
its expert's worker, the workers at once, each query aggregated as soon as its answers are in
and handed on (`finished`) as soon as it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from experts.options import BackendOptions
from orchestrator.budgets.planner import BudgetPlanner
from orchestrator.domain import Ask, Decision, Outcome, RecruitMode
from orchestrator.pipeline.batch import BatchRun, Finished
from orchestrator.pipeline.decide import DIRECT, Decider, GenerationLimits
from orchestrator.pipeline.keywords import KeywordReader
from orchestrator.pipeline.snapshot import PoolSnapshot
from orchestrator.pipeline.stream import StreamHub
from orchestrator.probe import NULL_PROBE, Probe
from orchestrator.routing.learning import CompetitionPolicy, Lesson
from orchestrator.scheduling.fleet import Fleet
from skills.embedder import Embedder

__all__ = ["DIRECT", "Finished", "GenerationLimits", "Pipeline", "PoolSnapshot"]


Learn = Callable[[int, Lesson], None]  # (the query's place in the batch, what it taught)


class Pipeline:
    def __init__(self, fleet: Fleet, embedder: Embedder, planner: BudgetPlanner | None = None,
                 limits: GenerationLimits | None = None, skills_per_query: int = 3, aggregation: str = "llm",
                 probe: Probe = NULL_PROBE, options: BackendOptions | None = None, fallback: bool = True,
                 policy: CompetitionPolicy | None = None, explore_rate: float = 0.0,
                 keywords: tuple[KeywordReader, str] | None = None, recruit: RecruitMode | None = None):
        self.fleet, self.embedder, self.probe = fleet, embedder, probe
        self.planner = planner or BudgetPlanner()
        self.limits = limits or GenerationLimits()
        self.aggregation = aggregation  # "vote": no LLM reads the answers (replay pools); "auto": not lettered ones
        self.fallback = fallback  # a failed expert's next-ranked stand-in, for routed queries
        self.streams = StreamHub()  # live clients of streamed queries, by their Ask.stream_to
        self.decider = Decider(embedder, self.planner, self.limits, skills_per_query, aggregation, probe, options,
                               policy, explore_rate, keywords, recruit)

    def route(self, pool: PoolSnapshot, asks: Sequence[Ask], dry_run: bool = False) -> list[Decision]:
        """Skills, scores and recruits for every query, generating nothing."""
        return self.decider.route(pool, asks, dry_run)

    def answer(self, pool: PoolSnapshot, asks: Sequence[Ask], decisions: Sequence[Decision],
               embeddings: Sequence[np.ndarray | None] | None = None, learn: Learn | None = None,
               finished: Finished | None = None) -> list[Outcome]:
        """Generate across the workers, then aggregate; the decisions were made at admission.
        Each query is handed to `finished` as soon as it is done (on a device thread; its device
        times so far), every outcome returned at the end. A competed or explored query (its
        embedding given) teaches the router a lesson, handed to `learn` with the query's place
        in the batch once the whole batch is done, as the planner and the probe learn from it."""
        run = BatchRun(pool, asks, decisions, self.fleet, self.planner, self.limits, self.aggregation,
                       self.fallback, embeddings, self.streams, finished, self.decider.options)
        outcomes = run.run()
        self.planner.observe(pool.experts, [a for o in outcomes for a in o.answers], pool.sites())
        policy = self.decider.policy
        for index, lesson in run.lessons.items():
            if learn is not None and (policy is None or policy.teaches(lesson)):
                learn(index, lesson)
        self.probe.answered(outcomes)
        return outcomes
