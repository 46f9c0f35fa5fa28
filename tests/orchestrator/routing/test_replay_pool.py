"""A replay pool from a recording folder: experts, split, profiling, and a model added later."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from experts.replay import ReplayBackend, load_recording
from orchestrator.routing.knn_router import KnnRouter
from orchestrator.routing.recruit import recruit
from orchestrator.routing.replay_pool import (
    expert_name,
    is_open_small,
    nearest_skills,
    profile_replay_pool,
    question_prompt,
    replay_pool,
    routing_text,
    skill_vocabulary,
    split_questions,
)
from orchestrator.routing.router import SymbolicRouter
from skills.embedder import Embedder
from skills.grading import grade

KEPT = ["Llama-2-7b-hf", "Mistral-7B-v0.1", "gemma-7b"]
LATE = "gemini-1.5-pro-002"  # far stronger than the kept three: it must be recruited once known
PER_CATEGORY = 5
SliceRecording = Callable[[Path, Sequence[str], int], Path]  # the conftest fixture's signature


@pytest.fixture(scope="module")
def folder(slice_recording: SliceRecording, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return slice_recording(tmp_path_factory.mktemp("pool"), [*KEPT, LATE], PER_CATEGORY)


def test_one_replay_expert_per_recorded_model(folder: Path) -> None:
    pool = replay_pool(folder)
    assert [e.name for e in pool] == [*KEPT, LATE]
    assert {e.base.kind for e in pool} == {"replay"}
    assert [e.base.model for e in pool] == [*KEPT, LATE]
    assert {e.base.source for e in pool} == {str(folder.resolve())}
    assert [e.name for e in replay_pool(folder, ["gemma-7b"])] == ["gemma-7b"]
    with pytest.raises(ValueError, match="not recorded .*: gpt-5"):
        replay_pool(folder, ["gpt-5"])


def test_expert_names_are_valid_for_any_column() -> None:
    assert expert_name("Meta-Llama-3_1-8B-Instruct") == "Meta-Llama-3_1-8B-Instruct"
    assert expert_name("org/model name (v2)") == "org-model-name-v2"


def test_open_small_means_published_size_up_to_13b_in_total() -> None:
    assert is_open_small("Llama-2-13b-hf") and is_open_small("Phi-3-mini-4k-instruct")
    assert not is_open_small("Mixtral-8x7B-v0.1")  # 12.9B active, 46.7B to hold
    assert not is_open_small("gemini-1.5-flash-002")  # closed: size is a guess
    assert not is_open_small("Yi-34B")


def test_split_is_seeded_stratified_and_disjoint(folder: Path) -> None:
    rec = load_recording(folder)
    profiling, test = split_questions(rec, 0.4, seed=3)
    assert split_questions(rec, 0.4, seed=3) == (profiling, test)
    assert split_questions(rec, 0.4, seed=4) != (profiling, test)
    assert not set(profiling) & set(test) and len(profiling) + len(test) == len(rec.questions)
    per_category = Counter(rec.questions[q].category for q in test)
    assert set(per_category.values()) == {2}  # round(5 × 0.4) of each category
    with pytest.raises(ValueError, match="fraction"):
        split_questions(rec, 1.0, seed=0)


def test_profiled_marks_equal_what_the_backends_answer_and_the_grader_says(folder: Path, embedder: Embedder) -> None:
    rec = load_recording(folder)
    ids = list(rec.questions)[:12]
    profile = profile_replay_pool(folder, ids, embedder)
    for spec in replay_pool(folder):
        backend = ReplayBackend.from_spec(spec.base)
        backend.load()
        gens = backend.generate([spec.request(q, question_prompt(rec.questions[q])) for q in ids])
        graded = [grade(g.text, rec.questions[q].answer, "choice", 10) for g, q in zip(gens, ids, strict=True)]
        assert profile.evidence.correct[spec.name].tolist() == graded  # type: ignore[index]
    assert all(rec.questions[q].category in skills for q, skills in zip(ids, profile.skills, strict=True))


def test_a_model_added_to_the_folder_is_profiled_and_recruited(
    slice_recording: SliceRecording, folder: Path, tmp_path: Path, embedder: Embedder
) -> None:
    without = slice_recording(tmp_path / "without", KEPT, PER_CATEGORY)
    profiling, test = split_questions(load_recording(without), 0.5, seed=0)
    before = profile_replay_pool(without, profiling, embedder)
    assert LATE not in before.evidence.profiles
    # The same folder with the model's column back: no code change, just a new profile.
    after = profile_replay_pool(folder, profiling, embedder)
    rec = load_recording(folder)
    marks = after.evidence.correct[LATE]  # type: ignore[index]
    assert marks.tolist() == [rec.answer(LATE, q) == rec.questions[q].answer for q in profiling]
    assert after.evidence.profiles[LATE] and max(after.evidence.competence, key=after.evidence.competence.get) == LATE  # type: ignore[arg-type]
    queries = embedder.encode([routing_text(rec.questions[q]) for q in test])
    knn = KnnRouter(after.evidence)
    top = Counter(recruit(knn.score([], e), 1, "topk")[0] for e in queries)
    assert top.most_common(1)[0][0] == LATE
    symbolic = SymbolicRouter(after.evidence)
    assert any(LATE in recruit(symbolic.score(after.skills[i]), 3, "topk") for i in range(len(profiling)))
    assert not np.isnan(knn.estimate(queries)).any()


def test_nearest_skills_from_embeddings_match_the_vocabulary_fast_path(folder: Path, embedder: Embedder) -> None:
    rec = load_recording(folder)
    texts = [routing_text(q) for q in list(rec.questions.values())[:8]]
    vocabulary = skill_vocabulary(rec, embedder)
    expected = [[m.skill for m in ms] for ms in vocabulary.nearest_for_texts(texts, 3)]
    assert nearest_skills(vocabulary, embedder.encode(texts), 3) == expected
    assert {q.category for q in rec.questions.values()} <= set(vocabulary.skills)
