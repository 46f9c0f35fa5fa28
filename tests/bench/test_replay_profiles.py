"""bench/replay_profiles.py: small open models, and a replay pool's routing evidence read straight
from the recording (the same marks the service's backends answer)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from experts.replay import ReplayBackend, load_recording
from orchestrator.pools.loader import replay_pool, split_questions
from orchestrator.routing.knn_router import KnnRouter
from orchestrator.routing.recruit import recruit
from orchestrator.routing.router import SymbolicRouter
from skills.embedder import Embedder
from skills.grading import grade
from skills.question_text import question_part
from tests.conftest import REPLAY

KEPT = ["Llama-2-7b-hf", "Mistral-7B-v0.1", "gemma-7b"]
LATE = "gemini-1.5-pro-002"  # far stronger than the kept three: it must be recruited once known
PER_CATEGORY = 5
SliceRecording = Callable[[Path, Sequence[str], int], Path]  # the conftest fixture's signature


@pytest.fixture(scope="module")
def rp(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("replay_profiles")


@pytest.fixture(scope="module")
def folder(slice_recording: SliceRecording, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return slice_recording(tmp_path_factory.mktemp("pool"), [*KEPT, LATE], PER_CATEGORY)


def test_open_small_means_published_size_up_to_13b_in_total(rp: ModuleType) -> None:
    assert rp.is_open_small("Llama-2-13b-hf") and rp.is_open_small("Phi-3-mini-4k-instruct")
    assert not rp.is_open_small("Mixtral-8x7B-v0.1")  # 12.9B active, 46.7B to hold
    assert not rp.is_open_small("gemini-1.5-flash-002")  # closed: size is a guess
    assert not rp.is_open_small("Yi-34B")


def test_profiled_marks_equal_what_the_backends_answer_and_the_grader_says(
    rp: ModuleType, folder: Path, embedder: Embedder
) -> None:
    rec = load_recording(folder)
    ids = list(rec.questions)[:12]
    profile = rp.profile_replay_pool(folder, ids, embedder)
    for spec in replay_pool(folder):
        backend = ReplayBackend.from_spec(spec.base)
        backend.load()
        gens = backend.generate([spec.request(q, rp.question_prompt(rec.questions[q])) for q in ids])
        graded = [grade(g.text, rec.questions[q].answer, "choice", 10) for g, q in zip(gens, ids, strict=True)]
        assert profile.evidence.correct[spec.name].tolist() == graded  # type: ignore[index]
    assert all(rec.questions[q].category in skills for q, skills in zip(ids, profile.skills, strict=True))


def test_a_model_added_to_the_folder_is_profiled_and_recruited(
    rp: ModuleType, slice_recording: SliceRecording, folder: Path, tmp_path: Path, embedder: Embedder
) -> None:
    without = slice_recording(tmp_path / "without", KEPT, PER_CATEGORY)
    profiling, test = split_questions(load_recording(without), 0.5, seed=0)
    before = rp.profile_replay_pool(without, profiling, embedder)
    assert LATE not in before.evidence.profiles
    # The same folder with the model's column back: no code change, just a new profile.
    after = rp.profile_replay_pool(folder, profiling, embedder)
    rec = load_recording(folder)
    marks = after.evidence.correct[LATE]  # type: ignore[index]
    assert marks.tolist() == [rec.answer(LATE, q) == rec.questions[q].answer for q in profiling]
    assert after.evidence.profiles[LATE] and max(after.evidence.competence, key=after.evidence.competence.get) == LATE  # type: ignore[arg-type]
    queries = embedder.encode([rp.routing_text(rec.questions[q]) for q in test])
    knn = KnnRouter(after.evidence)
    top = Counter(recruit(knn.score([], e), 1, "topk")[0] for e in queries)
    assert top.most_common(1)[0][0] == LATE
    symbolic = SymbolicRouter(after.evidence)
    assert any(LATE in recruit(symbolic.score(after.skills[i]), 3, "topk") for i in range(len(profiling)))
    assert not np.isnan(knn.estimate(queries)).any()


def test_nearest_skills_from_embeddings_match_the_vocabulary_fast_path(
    rp: ModuleType, folder: Path, embedder: Embedder
) -> None:
    rec = load_recording(folder)
    texts = [rp.routing_text(q) for q in list(rec.questions.values())[:8]]
    vocabulary = rp.skill_vocabulary(rec, embedder)
    expected = [[m.skill for m in ms] for ms in vocabulary.nearest_for_texts(texts, 3)]
    assert rp.nearest_skills(vocabulary, embedder.encode(texts), 3) == expected
    assert {q.category for q in rec.questions.values()} <= set(vocabulary.skills)


def test_test_prompts_ask_each_question_text_once(rp: ModuleType) -> None:
    """MMLU-Pro repeats texts under other ids: 18 of a latency bench's first 200 prompts were a
    text asked before, embedded from the cache rather than as a new query is."""
    prompts = rp.split_test_prompts(str(REPLAY), 400)
    assert len(prompts) == 400 and len({question_part(p) for p in prompts}) == 400
