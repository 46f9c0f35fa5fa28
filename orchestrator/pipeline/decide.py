"""Routing a batch of admitted queries: skills → routing → budgets, generating nothing.

Each text is embedded once, and that one embedding both finds the query's skills and places it
for the router. Only experts that can take the query are scored (`experts.traits.check_prompt`:
a recording that lacks it, a prompt over an expert's context window); a query none can take is
refused, naming why. A query with a latency or energy budget gets the exact best subset within
it (MoE^2, `budgets.planner`) instead of the router's draws.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from experts.backend import BackendError, ModelSourceError
from experts.options import BackendOptions
from experts.traits import check_prompt, prompt_scope
from experts.types import ExpertSpec
from orchestrator.aggregation.vote import option_count
from orchestrator.budgets.planner import BudgetPlan, BudgetPlanner, PoolView, TokenLimits
from orchestrator.budgets.solver import InfeasibleBudget
from orchestrator.domain import (
    Ask,
    Decision,
    ExpertScore,
    ExpertUnusable,
    NoExperts,
    QueryError,
    RecruitMode,
    SkillMatch,
    Unanswerable,
    UnknownExpert,
)
from orchestrator.pipeline.keywords import KeywordReader, skills_or_nearest
from orchestrator.pipeline.snapshot import PoolSnapshot
from orchestrator.probe import NULL_PROBE, Probe
from orchestrator.routing.learning import CompetitionPolicy, observed_counts
from orchestrator.routing.recruit import recruit, score
from skills.embedder import Embedder
from skills.question_text import question_part
from skills.vocabulary import SkillMatch as VocabularyMatch

DIRECT = "direct"  # the router name of a query that named its expert
Found = tuple[Sequence[VocabularyMatch], Sequence[ExpertScore]]  # a routed query's skills and scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationLimits:
    expert_max_tokens: int = 96
    aggregator_max_tokens: int = 96

    def tokens(self, asked: int | None = None) -> TokenLimits:
        """The pool's limits, lowered by a query's own `max_tokens` (`asked`) as its generations
        are (`sampling.asked`)."""
        cap = asked or max(self.expert_max_tokens, self.aggregator_max_tokens)
        return TokenLimits(min(self.expert_max_tokens, cap), min(self.aggregator_max_tokens, cap))


class Decider:
    def __init__(self, embedder: Embedder, planner: BudgetPlanner, limits: GenerationLimits,
                 skills_per_query: int = 3, aggregation: str = "llm", probe: Probe = NULL_PROBE,
                 options: BackendOptions | None = None, policy: CompetitionPolicy | None = None,
                 explore_rate: float = 0.0, keywords: tuple[KeywordReader, str] | None = None,
                 recruit_mode: RecruitMode | None = None):
        self.embedder, self.planner, self.limits, self.probe = embedder, planner, limits, probe
        self.skills_per_query, self.aggregation = skills_per_query, aggregation
        self.options = options or BackendOptions()  # how an expert's tokenizer is found
        self.policy, self.explore_rate = policy, explore_rate  # None: the router never competes
        self.keywords = keywords  # (reader, keyword expert): skills from the keyword LLM
        self._unserved: PoolSnapshot | None = None  # the snapshot whose missing keyword expert was logged
        self.recruit_mode = recruit_mode  # the pool's mode for a query naming none; None: the router's

    def route(self, pool: PoolSnapshot, asks: Sequence[Ask], dry_run: bool = False) -> list[Decision]:
        return self.route_embedded(pool, asks, dry_run)[0]

    def route_embedded(self, pool: PoolSnapshot, asks: Sequence[Ask], dry_run: bool = False
                       ) -> tuple[list[Decision], list[np.ndarray | None]]:
        """A decision for every query, and each routed query's embedding; raises a `QueryError`
        naming the first query that cannot be taken (no expert, none able to answer it, an unknown
        expert, no budget fit). A dry run (/v1/routes) decides competitions without spending
        the per-minute cap, and is not reported to the probe (metrics count routed queries)."""
        started = time.perf_counter()
        if not pool.experts:
            raise NoExperts("no profiled expert in the pool yet")
        routed = [i for i, a in enumerate(asks) if a.expert is None]
        texts = [asks[i].text for i in routed]
        # The question alone is embedded and read by the keyword LLM, as profiling has the memory's
        # questions (the keyword LLM was once sent the options and reply line as well)
        questions = [question_part(t) for t in texts]
        embeddings = self.embedder.encode(questions)
        skills = self._skills(pool, questions, embeddings)
        # one matrix product for every routed query, not one per query
        options = [option_count(t) for t in texts]  # each query's chance level, for calibrated weights
        scores = pool.router.score_batch([[m.skill for m in ms] for ms in skills], embeddings, options) \
            if routed else []
        found = {i: (ms, sc) for i, ms, sc in zip(routed, skills, scores, strict=True)}
        decisions = self._decided(pool, asks, found, dry_run)
        if not dry_run:  # a preview is no routed query: it must not count as routed or recruited
            self.probe.routed(decisions, time.perf_counter() - started)
        by_ask = dict(zip(routed, embeddings, strict=True))
        return decisions, [by_ask.get(i) for i in range(len(asks))]

    def _decided(self, pool: PoolSnapshot, asks: Sequence[Ask], found: Mapping[int, Found], dry_run: bool
                 ) -> list[Decision]:
        """Every query's decision; if one is refused, the request will not run, so the slots of
        the per-minute cap the queries before it took go back (a retry must not find it spent)."""
        decisions: list[Decision] = []
        try:
            for i, a in enumerate(asks):
                decisions.append(self._decide(pool, i, a, *found.get(i, ([], [])), dry_run=dry_run))
        except Exception:
            if not dry_run:  # a dry run took none
                self.release(decisions)
            raise
        return decisions

    def release(self, decisions: Sequence[Decision]) -> None:
        """Give back the cap's slots these decisions took: their queries will not run."""
        if self.policy is not None:
            self.policy.give_back(sum(1 for d in decisions if d.competitors))

    def _skills(self, pool: PoolSnapshot, texts: list[str], embeddings: np.ndarray) -> list[list[VocabularyMatch]]:
        """Each query's skills: its keywords (read by the keyword LLM) mapped to the nearest
        profiled skills, or, the fast default, the skills nearest its embedding (also a query
        the keyword LLM read nothing for: it failed or timed out)."""
        if self.keywords is not None and self.keywords[1] not in pool.experts:
            self._unserved_reader(pool, self.keywords[1])
        if self.keywords is None or self.keywords[1] not in pool.experts or not texts:
            return pool.vocabulary.nearest_for_embeddings(texts, embeddings, self.skills_per_query)
        reader, name = self.keywords
        found = reader.read(pool.experts[name], pool.worker_of(name, reader.fleet.default), texts)
        return skills_or_nearest(found, texts, embeddings, pool.vocabulary, self.skills_per_query)

    def _unserved_reader(self, pool: PoolSnapshot, name: str) -> None:
        """Say, once per snapshot (not a line a query), that keyword mode fell back silently: the
        keyword expert was disabled, removed or is not ready."""
        if self._unserved is not pool:
            self._unserved = pool
            log.warning("keyword_mode llm: the keyword expert %r is not served (disabled, removed or not ready): "
                        "queries are routed by the skills nearest their embedding", name)

    def _decide(self, pool: PoolSnapshot, index: int, ask: Ask, matches: Sequence[VocabularyMatch],
                ranked: Sequence[ExpertScore], dry_run: bool = False) -> Decision:
        eligible = self.eligible(pool, index, ask)
        seed = ask.seed if ask.seed is not None else random.randrange(2**31)
        if ask.expert is not None:
            return self._direct(pool, index, ask, seed)
        skills = [SkillMatch(keyword=m.keyword, skill=m.skill, similarity=m.similarity) for m in matches]
        scores, certain = _candidates(pool, ranked, matches, eligible)
        if not certain:
            raise NoExperts("every expert that can take this query is still being profiled", index)
        if ask.budget is not None:
            plan = self._plan(pool, index, ask, certain)
            return Decision.made(pool.router.name, "budget", seed, skills, scores, plan.chosen, pool.aggregator,
                                 plan.record())
        mode = ask.mode or self.recruit_mode or pool.router.preferred_mode
        chosen = recruit(certain, ask.k, mode, random.Random(seed))
        competitors, competition = self._competitors(pool, (seed, ask.text), eligible, chosen, dry_run)
        return Decision.made(pool.router.name, mode, seed, skills, scores, chosen, pool.aggregator,
                             competitors=competitors, competition=competition)

    def _direct(self, pool: PoolSnapshot, index: int, ask: Ask, seed: int) -> Decision:
        """The expert the query named; under a budget, only if it fits it (an `InfeasibleBudget`
        naming the expert's cost otherwise), where the budget was once passed over unread. It is
        not scored (nothing is chosen), so the plan weighs it as certain: only its cost counts."""
        assert ask.expert is not None
        plan = self._plan(pool, index, ask, [score(ask.expert, 1.0, 1.0, 1.0)]) if ask.budget is not None else None
        return Decision.made(DIRECT, "topk", seed, [], [], [ask.expert], None, plan.record() if plan else None)

    def _competitors(self, pool: PoolSnapshot, draw: tuple[int, str], eligible: set[str], chosen: Sequence[str],
                     dry_run: bool) -> tuple[list[str], bool]:
        """Who answers only to be scored: every other eligible expert when the query competes,
        else a new (uncertain) expert explored now and then; both within the per-minute cap."""
        if self.policy is None:
            return [], False
        others = sorted(eligible - set(chosen))
        if others and self.policy.fires(*draw, dry_run=dry_run):
            return others, True
        explore = [n for n in others if n in pool.uncertain]
        if explore and self.policy.fires(*draw, "explore", self.explore_rate, dry_run):
            return [_least_seen(pool, explore, draw[0])], False
        return [], False

    def eligible(self, pool: PoolSnapshot, index: int, ask: Ask) -> set[str]:
        """The experts that can take this query; none is an `Unanswerable` naming why."""
        if ask.expert is not None and ask.expert not in pool.experts:
            raise UnknownExpert(f"the model {ask.expert!r} does not exist; GET /v1/models lists them", index, "model")
        names = [ask.expert] if ask.expert is not None else list(pool.experts)
        verdicts: dict[str, Refusal | None] = {}
        refused = {}
        for name in names:
            spec = pool.experts[name]
            max_tokens = min(self.limits.tokens(ask.max_tokens).expert_max_tokens, spec.sampling.max_tokens)
            scope = prompt_scope(spec, max_tokens)
            if scope not in verdicts:
                verdicts[scope] = self._refusal(spec, ask.text, max_tokens)
            refused[name] = verdicts[scope]
        eligible = {n for n, why in refused.items() if why is None}
        if not eligible:
            raise _refused(refused, index)
        return eligible

    def _refusal(self, spec: ExpertSpec, text: str, max_tokens: int) -> Refusal | None:
        try:
            check_prompt(spec, text, max_tokens, self.options)
        except ModelSourceError as exc:  # its weights, not the prompt: a file gone since registration
            return Refusal(f"expert {spec.name!r} cannot run: {exc}", unusable=True)
        except BackendError as exc:
            return Refusal(str(exc))
        return None

    def _plan(self, pool: PoolSnapshot, index: int, ask: Ask, scores: list[ExpertScore]) -> BudgetPlan:
        assert ask.budget is not None
        view = PoolView(pool.experts, pool.aggregator, pool.router.calibrated, self.aggregation, pool.sites())
        try:
            return self.planner.plan(view, ask.text, scores, ask.budget, ask.k, self.limits.tokens(ask.max_tokens))
        except InfeasibleBudget as exc:
            exc.index = index
            raise


@dataclass(frozen=True)
class Refusal:
    """Why an expert cannot take a query; `unusable`: its model cannot be read, whatever the query."""

    message: str
    unusable: bool = False


def _refused(refused: Mapping[str, Refusal | None], index: int) -> QueryError:
    """What a query no expert can take gets: a refusal of its prompt is the client's to fix (422);
    where every expert's model is unreadable, the service's (503, naming the model): that read as
    a 422 on the client's messages ("no such file: …/mine.gguf")."""
    reasons = [r for r in refused.values() if r is not None]
    prompt = next((r for r in reasons if not r.unusable), None)
    if prompt is not None:
        return Unanswerable(prompt.message, index)
    return ExpertUnusable(reasons[0].message, index, "model")


def _candidates(pool: PoolSnapshot, ranked: Sequence[ExpertScore], matches: Sequence[VocabularyMatch],
                eligible: set[str]) -> tuple[list[ExpertScore], list[ExpertScore]]:
    """The query's scores (the experts that can take it) and the certain ones among them, the only
    ones recruited: the rest are explored."""
    ready = eligible - pool.uncertain
    scores = pool.router.among([s for s in ranked if s.name in eligible], [m.skill for m in matches], ready)
    return scores, [s for s in scores if s.name in ready]


def _least_seen(pool: PoolSnapshot, names: Sequence[str], seed: int) -> str:
    """The explored expert with the fewest observed marks, ties by the query's seed: the first
    by name alone took every exploration, so a second new expert was never explored."""
    counts = observed_counts(pool.evidence) if pool.evidence is not None else {}
    fewest = min(counts.get(n, 0) for n in names)
    return random.Random(f"explore-pick:{seed}").choice(sorted(n for n in names if counts.get(n, 0) == fewest))
