"""Nearest-skill mapping with the real embedder."""

from __future__ import annotations

import pytest

from skills.datasets import load_mmlu
from skills.embedder import Embedder
from skills.keywords import parse_keywords
from skills.profiling import build_profile
from skills.vocabulary import MMLU_SUBJECTS, SEED_SKILLS, SkillVocabulary


@pytest.fixture(scope="module")
def vocab(embedder: Embedder) -> SkillVocabulary:
    return SkillVocabulary(SEED_SKILLS, embedder)


def test_seed_skills() -> None:
    assert len(MMLU_SUBJECTS) == 57 and len(set(SEED_SKILLS)) == len(SEED_SKILLS)
    assert {"high school mathematics", "arithmetic", "programming"} <= set(SEED_SKILLS)


def test_map_keywords_to_nearest_skill(vocab: SkillVocabulary) -> None:
    keywords = ["genetics", "coding", "contract law", "multiplication", "diplomacy"]
    matches = vocab.map_keywords(keywords)
    assert [m.keyword for m in matches] == keywords
    assert [m.skill for m in matches] == [
        "medical genetics",
        "programming",
        "professional law",
        "arithmetic",
        "us foreign policy",
    ]
    assert all(0.0 < m.similarity <= 1.0 + 1e-6 for m in matches)
    assert vocab.map_keywords([]) == []


def test_add_grows_and_dedupes(embedder: Embedder) -> None:
    vocab = SkillVocabulary(["virology", "Virology ", "law"], embedder)
    assert vocab.skills == ["virology", "law"]
    assert vocab.add(["law", "Property  Law"]) == ["property law"]
    assert vocab.map_keywords(["property law"])[0].skill == "property law"
    assert vocab.map_keywords(["property law"])[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_parsed_keywords_are_the_vocabulary_s_names(embedder: Embedder) -> None:
    """Profiles are keyed by parsed keywords and the vocabulary holds the names: one normal form,
    or a skill mapped to its own name finds no profile entry (S = 0 on it)."""
    keywords = parse_keywords("Keywords: Linear  Algebra, number\u00a0theory, calculus")
    profile = build_profile("e", [(keywords, True)])
    vocab = SkillVocabulary(keywords, embedder)
    assert vocab.skills == keywords
    mapped = [m.skill for m in vocab.map_keywords(["linear algebra", "number theory"])]
    assert [profile.scores.get(s, 0.0) for s in mapped] == [1.0, 1.0]


def test_empty_vocabulary_maps_nothing(embedder: Embedder) -> None:
    vocab = SkillVocabulary([], embedder)
    assert vocab.map_keywords(["law"]) == [] and vocab.nearest_for_text("law") == []


def test_nearest_for_text_fast_path(vocab: SkillVocabulary) -> None:
    text = "Solve for x: 3x + 5 = 20. What is the value of x in this linear equation?"
    matches = vocab.nearest_for_text(text, m=3)
    assert len(matches) == 3 and matches[0].keyword == ""  # no keyword was read
    assert [m.similarity for m in matches] == sorted((m.similarity for m in matches), reverse=True)
    assert any("mathematics" in m.skill or m.skill == "abstract algebra" for m in matches)
    assert vocab.nearest_for_text(text, m=3, min_similarity=0.99) == []


def test_nearest_for_texts_batched_matches_single(vocab: SkillVocabulary) -> None:
    texts = ["Which virus causes influenza?", "Write a Python function to sort a list."]
    batched = vocab.nearest_for_texts(texts, m=2)
    single = [vocab.nearest_for_text(t, m=2) for t in texts]
    assert [[m.skill for m in ms] for ms in batched] == [[m.skill for m in ms] for ms in single]
    assert [m.similarity for m in batched[0]] == pytest.approx([m.similarity for m in single[0]])
    assert {m.skill for m in batched[0]} & {"virology", "college medicine", "college biology"}
    assert batched[1][0].skill == "programming"


@pytest.mark.slow  # 114 full questions: about 1 s idle, 20 s on this shared 2-core machine
def test_fast_path_finds_the_subject_on_real_mmlu(vocab: SkillVocabulary) -> None:
    # Question text alone vs subject names: a weak signal, but far above the 1/64 of chance.
    questions = load_mmlu("validation", per_subject=2, seed=0)
    top3 = vocab.nearest_for_texts([q.question for q in questions], m=3)
    hits = sum(q.subject in {m.skill for m in ms} for q, ms in zip(questions, top3, strict=True))
    assert hits / len(questions) > 0.25
