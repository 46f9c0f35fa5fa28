"""A pool of replay experts from a recording folder, and its routing evidence.

Every model column of the folder's `predictions.csv.gz` becomes one expert, so a model added to
the folder later joins the pool, is profiled from its recorded answers on the profiling split and
can be recruited, with no code change. Profiling a replay expert needs no generation: its graded
answers are in the recording, so `replay_evidence` reads them directly (the same marks the
service's generic profiling run gets by asking each `ReplayBackend`, as a test checks).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experts.backend import ModelSourceError
from experts.cost_model import parse_model_size
from experts.replay import RecordedQuestion, Recording, load_recording
from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.pool_config import (
    AggregatorConfig,
    GenerationBudget,
    MMLUProSource,
    PoolConfig,
    PoolConfigError,
    ValidationConfig,
)
from orchestrator.routing.router import RoutingEvidence
from skills.datasets import LabelledQuestion, format_prompt
from skills.embedder import Embedder
from skills.profiling import build_profile
from skills.vocabulary import SEED_SKILLS, SkillVocabulary

OPEN_SMALL_MAX_PARAMS = 13e9
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.\-]+")


def expert_name(model: str) -> str:
    """A valid expert name for a recorded model column (ExpertSpec allows [A-Za-z0-9_.-], 64)."""
    name = _NAME_BAD.sub("-", model.strip()).strip("-_.")[:64]
    return name or "model"


def replay_pool(folder: str | Path, models: Sequence[str] | None = None) -> list[ExpertSpec]:
    """One replay expert per recorded model (all columns, or the named ones, in folder order)."""
    recording = load_recording(folder)
    wanted = list(models) if models is not None else recording.models
    if missing := [m for m in wanted if not recording.has_model(m)]:
        raise ValueError(f"models not recorded in {recording.folder}: {', '.join(missing)}")
    source = str(recording.folder)
    return [ExpertSpec(name=expert_name(m), base=BaseModelSpec(kind="replay", source=source, model=m)) for m in wanted]


def replay_pool_config(folder: str | Path, test_size: float = 0.5, seed: int = 0) -> PoolConfig:
    """The pool `skillroute serve --pool replay:FOLDER` runs: every recorded model, profiled from
    its recorded answers on the same seeded profiling split the routing benchmark uses, routed
    by the k-NN router and aggregated by weighted voting (no replay expert can read answers)."""
    try:
        experts = replay_pool(folder)
    except ModelSourceError as exc:
        raise PoolConfigError(f"invalid replay pool {folder}: {exc}") from exc
    path = str(load_recording(folder).folder)
    source = MMLUProSource(path=path, split="profiling", test_size=test_size, split_seed=seed)
    return PoolConfig(
        name=f"replay:{path}",
        validation=ValidationConfig(sources=[source], seed=seed),
        generation=GenerationBudget(profiling_max_tokens=8, expert_max_tokens=8, aggregator_max_tokens=8),
        aggregator=AggregatorConfig(mode="vote"),
        router="knn",
        experts=experts,
    )


def profiling_split(folder: str | Path, split: str, test_size: float, seed: int) -> set[str]:
    """The question ids of one part of `split_questions`."""
    profiling, test = split_questions(load_recording(folder), test_size, seed)
    return set(profiling if split == "profiling" else test)


def is_open_small(model: str, max_params: float = OPEN_SMALL_MAX_PARAMS) -> bool:
    """Open weights (a published size, not an estimate) with at most `max_params` in total:
    what fits on one modest GPU. Mixtral-8x7B (46.7B total, 12.9B active) is not small."""
    size = parse_model_size(model)
    return size.source != "estimate" and size.total_params <= max_params


def split_questions(recording: Recording, test_size: float, seed: int) -> tuple[list[str], list[str]]:
    """Profiling and test question ids, stratified by category and drawn by `seed`.

    Only questions recorded for every model take part, so each method is scored on the same set.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test size must be a fraction in (0, 1), got {test_size}")
    by_category: dict[str, list[str]] = defaultdict(list)
    for qid, q in recording.questions.items():
        if all(recording.recorded(m, qid) for m in recording.models):
            by_category[q.category].append(qid)
    rng = random.Random(seed)
    profiling: list[str] = []
    test: list[str] = []
    for category in sorted(by_category):
        ids = by_category[category]
        rng.shuffle(ids)
        n_test = round(len(ids) * test_size)
        test += ids[:n_test]
        profiling += ids[n_test:]
    return profiling, test


def question_prompt(q: RecordedQuestion) -> str:
    """The prompt a replay expert is sent for a corpus question (the service's format)."""
    return format_prompt(LabelledQuestion(q.question_id, q.question, q.options, q.answer, q.category))


def routing_text(q: RecordedQuestion) -> str:
    """What routing embeds for a question: its stem. With the options too (the whole prompt) the
    k-NN router gained ~0.6 points on the small pool in cross-validation on profiling questions,
    but the texts are 2.7× longer (168 vs 63 tokens) and embedding 6k of them no longer fits the
    benchmark's 10 minutes on 2 shared cores. Queries that arrive with their options still route
    well against stems (checked in the same cross-validation: no loss)."""
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
    evidence = RoutingEvidence(profiles, np.asarray(embeddings, dtype=np.float32), marks, labels, choices)
    return ReplayProfile(evidence, list(question_ids), tagged)


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
