"""The Symbolic-MoE router's positive-S filter and its fallbacks run over the experts that can
take the query (eligible, and certain: not still being explored), not over the whole pool: an
expert dropped afterwards must not take the ready ones down with it."""

from __future__ import annotations

import pytest

from experts.types import ExpertSpec
from orchestrator.domain import Ask
from orchestrator.pipeline.decide import Decider, GenerationLimits
from orchestrator.pipeline.snapshot import PoolSnapshot
from orchestrator.routing.evidence import RoutingEvidence
from orchestrator.routing.router import SymbolicRouter
from skills.embedder import Embedder
from skills.vocabulary import SEED_SKILLS, SkillVocabulary
from tests.orchestrator.conftest import mock_expert

QUERY = "What is 17*23?"


class TooLongFor(Decider):
    """A decider whose `check_prompt` finds the query over `name`'s context window."""

    def __init__(self, embedder: Embedder, name: str):
        super().__init__(embedder, planner=None, limits=GenerationLimits())  # type: ignore[arg-type]
        self.name = name

    def _refusal(self, spec: ExpertSpec, text: str, max_tokens: int) -> str | None:
        return "over its context window" if spec.name == self.name else None


def pool(embedder: Embedder, profiles: dict[str, dict[str, float]], uncertain: frozenset[str] = frozenset()
         ) -> PoolSnapshot:
    experts = {n: mock_expert(n, f"m{i}") for i, n in enumerate(profiles)}
    evidence = RoutingEvidence(profiles)
    return PoolSnapshot(experts, SymbolicRouter(evidence), SkillVocabulary(SEED_SKILLS, embedder), None,
                        evidence=evidence, uncertain=uncertain)


# Mostly wrong in profiling (S < 0 on every skill) beside a new expert right once on each (S > 0).
READY_AND_NEW = {"ready_a": {s: -2.0 for s in SEED_SKILLS}, "ready_b": {s: -1.0 for s in SEED_SKILLS},
                 "newbie": {s: 1.0 for s in SEED_SKILLS}}


def test_ready_experts_are_recruited_when_only_an_explored_one_is_positive(embedder: Embedder) -> None:
    snapshot = pool(embedder, READY_AND_NEW, uncertain=frozenset({"newbie"}))
    decision = Decider(embedder, planner=None, limits=GenerationLimits()).route(  # type: ignore[arg-type]
        snapshot, [Ask(text=QUERY, k=2, seed=1, mode="topk")])[0]
    assert decision.recruited == ["ready_b", "ready_a"]  # shifted S: the less negative first
    assert {s.name for s in decision.experts} == {"ready_a", "ready_b", "newbie"}  # newbie still shown


def test_ready_experts_are_recruited_when_only_an_ineligible_one_is_positive(embedder: Embedder) -> None:
    decision = TooLongFor(embedder, "newbie").route(pool(embedder, READY_AND_NEW),
                                                     [Ask(text=QUERY, k=2, seed=1, mode="topk")])[0]
    assert decision.recruited == ["ready_b", "ready_a"]
    assert {s.name for s in decision.experts} == {"ready_a", "ready_b"}


# small: right as often as wrong overall (total 0, so γ = 0) but right on every skill but one.
ZERO_GAMMA = {"small": {**{s: 1.0 for s in SEED_SKILLS if s != "virology"}, "virology": 1.0 - len(SEED_SKILLS)},
              "big": {s: 1.0 for s in SEED_SKILLS}}


@pytest.mark.parametrize("mode", ["sample", "topk", "dynamic"])
def test_a_lone_expert_of_zero_competence_is_weighed_by_suitability(embedder: Embedder, mode: str) -> None:
    snapshot = pool(embedder, ZERO_GAMMA)
    assert snapshot.evidence is not None and snapshot.evidence.competence["small"] == 0.0
    decision = TooLongFor(embedder, "big").route(snapshot, [Ask(text=QUERY, k=2, seed=1, mode=mode)])[0]
    assert set(decision.recruited) == {"small"}
    assert [s.name for s in decision.experts] == ["small"] and decision.experts[0].weight > 0


class KeywordsSeen:
    """A keyword reader that records the texts it is asked about."""

    fleet = type("Fleet", (), {"default": "local"})()

    def __init__(self) -> None:
        self.texts: list[str] = []

    def read(self, expert: ExpertSpec, worker: str, texts: list[str]) -> list[list[str]]:
        self.texts += texts
        return [["algebra"] for _ in texts]


def test_the_keyword_llm_reads_a_query_s_question_as_profiling_read_the_memory_s(embedder: Embedder) -> None:
    """Profiling sends the keyword LLM each validation question's text alone; live routing sent
    the whole query, options and reply line: one question read two ways."""
    reader = KeywordsSeen()
    snapshot = pool(embedder, {"kw": {s: 1.0 for s in SEED_SKILLS}, "other": {s: 0.5 for s in SEED_SKILLS}})
    decider = Decider(embedder, planner=None, limits=GenerationLimits(), keywords=(reader, "kw"))  # type: ignore[arg-type]
    text = "Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nReply with 'Answer: <letter>'."
    decider.route(snapshot, [Ask(text=text, k=1, seed=1, mode="topk")])
    assert reader.texts == ["Which gas do plants absorb?"]
