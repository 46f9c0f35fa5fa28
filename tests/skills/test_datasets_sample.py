"""A limited question set is a seeded sample spread over its subjects, in their proportions."""

from __future__ import annotations

from collections import Counter

from skills.datasets import LabelledQuestion, sample_spread


def _questions(sizes: dict[str, int]) -> list[LabelledQuestion]:
    return [LabelledQuestion(f"{subject}-{i}", f"question {i} of {subject}", ("a", "b"), "A", subject)
            for subject, n in sorted(sizes.items()) for i in range(n)]


def test_a_limit_takes_each_subject_in_its_share() -> None:
    questions = _questions({"biology": 60, "law": 30, "physics": 10})
    drawn = sample_spread(questions, 10, seed=0)
    assert Counter(q.subject for q in drawn) == {"biology": 6, "law": 3, "physics": 1}


def test_the_shares_left_over_go_to_the_largest_remainders() -> None:
    questions = _questions({"biology": 5, "law": 4, "physics": 3})
    drawn = sample_spread(questions, 5, seed=0)  # exact shares 2.08, 1.67, 1.25
    assert Counter(q.subject for q in drawn) == {"biology": 2, "law": 2, "physics": 1}


def test_the_sample_is_drawn_by_the_seed() -> None:
    questions = _questions({"biology": 50, "law": 50})
    assert sample_spread(questions, 10, seed=1) == sample_spread(questions, 10, seed=1)
    assert sample_spread(questions, 10, seed=1) != sample_spread(questions, 10, seed=2)


def test_the_sample_keeps_the_subjects_order_and_each_subject_s_file_order() -> None:
    questions = _questions({"biology": 50, "law": 50})
    drawn = sample_spread(questions, 20, seed=3)
    assert drawn == [q for q in questions if q in drawn]


def test_a_limit_past_the_set_keeps_it_whole() -> None:
    questions = _questions({"biology": 3, "law": 2})
    assert sample_spread(questions, 5, seed=0) == sample_spread(questions, 9, seed=0) == questions
