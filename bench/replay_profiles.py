"""Replay-corpus helpers the benchmarks share (not a script): which models are small and open,
what routing embeds for a question, and a replay pool's routing evidence read straight from the
recording.

Profiling a replay expert needs no generation: its graded answers are in the recording, so
`replay_evidence` reads them directly (the same marks the service's profiling run gets by asking
each `ReplayBackend`, as tests/bench/test_replay_profiles.py checks).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast, get_args

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from experts.cost_model import parse_model_size  # noqa: E402
from experts.replay import RecordedQuestion, Recording, load_recording, normalise_text  # noqa: E402
from orchestrator.aggregation.option_prior import OptionPrior  # noqa: E402
from orchestrator.pools.loader import expert_name, replay_pool, split_questions  # noqa: E402
from orchestrator.pools.schema import (  # noqa: E402
    AggregatorConfig,
    GenerationBudget,
    MMLUProSource,
    PoolConfig,
    ValidationConfig,
)
from orchestrator.routing.evidence import RoutingEvidence, typical_options  # noqa: E402
from orchestrator.settings import embedding_kind  # noqa: E402
from skills.datasets import LabelledQuestion, format_prompt  # noqa: E402
from skills.embedder import Embedder, EmbeddingKind  # noqa: E402
from skills.profiling import build_profile  # noqa: E402
from skills.vocabulary import SEED_SKILLS, SkillVocabulary  # noqa: E402

OPEN_SMALL_MAX_PARAMS = 13e9


def is_open_small(model: str, max_params: float = OPEN_SMALL_MAX_PARAMS) -> bool:
    """Open weights (a published size, not an estimate) with at most `max_params` in total:
    what fits on one modest GPU. Mixtral-8x7B (46.7B total, 12.9B active) is not small."""
    size = parse_model_size(model)
    return size.source != "estimate" and size.total_params <= max_params


def question_prompt(q: RecordedQuestion) -> str:
    """The prompt a replay expert is sent for a corpus question (the service's format)."""
    return format_prompt(LabelledQuestion(q.question_id, q.question, q.options, q.answer, q.category))


def routing_text(q: RecordedQuestion) -> str:
    """What routing embeds for a question: its stem. With the options too (the whole prompt,
    2.7× longer) the k-NN router looked ~0.6 points better in cross-validation on the
    profiling questions, but on the test splits it is worse: router k=3 over the best single
    model on the open ≤13B pool, seeds 0-4, +4.37 static and +4.46 transformer against +4.85 and
    +4.62 with stems (before the vote's option prior). Queries that arrive with their options
    still route well against stems."""
    return q.question


def correct_marks(recording: Recording, models: Sequence[str], question_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Expert name → whether the model's recorded choice equals gold, per question."""
    gold = [recording.questions[q].answer for q in question_ids]
    return {
        expert_name(m): np.array([recording.answer(m, q) == g for q, g in zip(question_ids, gold, strict=True)])
        for m in models
    }



@dataclass
class ReplayProfile:
    """What profiling a replay pool produced: evidence for routers, and each question's skills."""

    evidence: RoutingEvidence
    question_ids: list[str]
    skills: list[list[str]]


def nearest_skills(vocabulary: SkillVocabulary, embeddings: np.ndarray, m: int = 3) -> list[list[str]]:
    """`SkillVocabulary.nearest_for_texts` (the embedding fast path, no keyword LLM) for texts
    already embedded: the same ranking against the same skill texts, without a second pass of
    thousands of questions through the model. A test pins it to the vocabulary's own answer."""
    names = vocabulary.skills
    if not names or m < 1:
        return [[] for _ in range(len(embeddings))]
    skill_texts = [vocabulary.TEXT_TEMPLATE.format(s) for s in names]
    sims = np.asarray(embeddings) @ vocabulary.embedder.encode(skill_texts).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :m]
    return [[names[j] for j in row] for row in order]


def skill_vocabulary(recording: Recording, embedder: Embedder) -> SkillVocabulary:
    """The seed skills plus the recording's category names, so a query can land on a category."""
    return SkillVocabulary(list(SEED_SKILLS) + sorted({q.category for q in recording.questions.values()}), embedder)


def replay_evidence(
    recording: Recording,
    question_ids: Sequence[str],
    embeddings: np.ndarray,
    skills: Sequence[Sequence[str]],
    models: Sequence[str] | None = None,
) -> ReplayProfile:
    """Profiles (skills ∪ the question's category, ±1) and per-question marks of the models."""
    models = list(models) if models is not None else recording.models
    marks = correct_marks(recording, models, question_ids)
    tagged = [
        list(dict.fromkeys([*s, recording.questions[q].category])) for q, s in zip(question_ids, skills, strict=True)
    ]
    profiles = {name: build_profile(name, zip(tagged, ok.tolist(), strict=True)).scores for name, ok in marks.items()}
    labels = [recording.questions[q].category for q in question_ids]
    choices = {expert_name(m): [recording.answer(m, q) for q in question_ids] for m in models}
    options = typical_options(len(recording.questions[q].options) for q in question_ids)
    prior = OptionPrior.fit((recording.questions[q].question, recording.questions[q].options,
                             recording.questions[q].answer) for q in question_ids)
    evidence = RoutingEvidence(profiles, np.asarray(embeddings, dtype=np.float32), marks, labels, choices,
                               options=options, option_prior=prior)
    return ReplayProfile(evidence, list(question_ids), tagged)


def vote_prior(prior: OptionPrior | None, q: RecordedQuestion) -> dict[str, float]:
    """The vote's prior over a recorded question's options (a router's `option_prior`, as the
    service's vote starts from it); {} without one."""
    return prior.log_ratios(q.question, q.options) if prior else {}


def embedding_kinds(text: str) -> list[EmbeddingKind]:
    """argparse type for a bench's --embedding: known kinds, comma-separated, each once, in order."""
    kinds = list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not kinds or any(k not in get_args(EmbeddingKind) for k in kinds):
        raise argparse.ArgumentTypeError(f"takes {', '.join(get_args(EmbeddingKind))}, comma-separated; got {text!r}")
    return cast(list[EmbeddingKind], kinds)


def routing_embedder(kind: EmbeddingKind | None = None) -> Embedder:
    """The embedder the service routes a replay pool with (k-NN router, the default kind), or
    `kind` where a bench compares kinds."""
    return Embedder(kind=kind or embedding_kind("auto", "knn"))


def profile_replay_pool(
    folder: str | Path,
    question_ids: Sequence[str],
    embedder: Embedder,
    models: Sequence[str] | None = None,
    skills_per_question: int = 3,
) -> ReplayProfile:
    """Everything routing needs for a replay pool, profiled on `question_ids` (embeds them)."""
    recording = load_recording(folder)
    embeddings = embedder.encode([routing_text(recording.questions[q]) for q in question_ids])
    skills = nearest_skills(skill_vocabulary(recording, embedder), embeddings, skills_per_question)
    return replay_evidence(recording, question_ids, embeddings, skills, models)


# ---------------------------------------------------------------- service-level benches

PACKAGED_DEVICES = Path(__file__).resolve().parents[1] / "experts" / "devices.yaml"


def replay_service_pool(folder: str, models: Sequence[str], name: str, timeout_s: float | None = None,
                        profiling_questions: int = 120) -> PoolConfig:
    """A pool of the named recorded models, profiled on part of the profiling split, voted."""
    experts = [s.model_copy(update={"timeout_s": timeout_s}) for s in replay_pool(folder, models)]
    source = MMLUProSource(path=folder, split="profiling", limit=profiling_questions)
    return PoolConfig(name=name, router="knn", aggregator=AggregatorConfig(mode="vote"),
                      validation=ValidationConfig(sources=[source]), experts=experts,
                      generation=GenerationBudget(profiling_max_tokens=8, expert_max_tokens=8, aggregator_max_tokens=8))


def devices_file(path: Path, workers: Sequence[dict[str, str]]) -> str:
    """The packaged device profiles with these workers declared beside them."""
    path.write_text(PACKAGED_DEVICES.read_text() + "\n" + yaml.safe_dump({"workers": list(workers)}))
    return str(path)


def split_test_size(folder: str) -> int:
    """How many questions the recording's test split holds (`split_test_prompts` gives no more)."""
    rec = load_recording(folder)
    return len(_distinct(rec, split_questions(rec, 0.5, 0)[1]))


def split_test_prompts(folder: str, n: int) -> list[str]:
    """The first `n` test-split questions of distinct text, as the service's prompt format shows
    them: a repeated question (MMLU-Pro's copies, other options) was embedded once and served
    from the embedder's cache after, 9% of a latency bench's 200 untimed as a new query is."""
    rec = load_recording(folder)
    return [question_prompt(rec.questions[q]) for q in _distinct(rec, split_questions(rec, 0.5, 0)[1])[:n]]


def _distinct(rec: Recording, ids: Sequence[str]) -> list[str]:
    """The ids whose question text no earlier one has."""
    seen: dict[str, str] = {}
    for q in ids:
        seen.setdefault(normalise_text(rec.questions[q].question), q)
    return list(seen.values())
