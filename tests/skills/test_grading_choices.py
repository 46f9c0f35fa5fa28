"""Choice extraction: which marker a reply commits with, and when it commits to none."""

from __future__ import annotations

import pytest

from skills.grading import extract_choice


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: B\nBecause option A is wrong.", "B"),
        ("The answer is C. Option A is wrong.", "C"),
        ("Answer: D. Choice B would hold only in a vacuum.", "D"),
        ("Option A is wrong; the correct option is D.", "D"),  # no answer marker: the last option one
    ],
)
def test_an_answer_marker_outranks_a_later_option_mention(text: str, expected: str) -> None:
    assert extract_choice(text, 4) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: A because it is larger", "A"),
        ("The answer is A since x grows", "A"),
        ("Final answer: I, since the rest fail", "I"),
        ("Answer: I think", "I"),
    ],
)
def test_a_capital_right_after_answer_is_the_letter(text: str, expected: str) -> None:
    assert extract_choice(text, 10) == expected


@pytest.mark.parametrize(
    "text",
    ["A and B are both plausible", "Answer: A or B", "The answer is (B)/(C)", "Answer: C or D. Answer: B or C"],
)
def test_a_hedge_between_letters_commits_to_none(text: str) -> None:
    assert extract_choice(text, 4) is None
