"""Answer extraction: the formats models really produce, and the traps."""

from __future__ import annotations

import pytest

from skills.grading import extract_boxed, extract_choice, extract_number, grade


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: C", "C"),
        ("Answer: C. Paris is the capital of France.", "C"),
        ("(C)", "C"),
        ("the answer is C.", "C"),
        ("The correct answer is (B) because of inertia.", "B"),
        ("C. Paris", "C"),
        ("C", "C"),
        ("  C) Paris", "C"),
        ("**B**", "B"),
        ("answer: c.", "C"),
        ("Final answer: **D**", "D"),
        ("I would say the correct option is D.", "D"),
        ("The answer is $\\boxed{\\text{B}}$", "B"),
        ("\\boxed{D}", "D"),
        ("Answer: A is right, the others are not.", "A"),
        ("A", "A"),
        ("A. Paris", "A"),
        ("I think B", "B"),
    ],
)
def test_extract_choice_formats(text: str, expected: str) -> None:
    assert extract_choice(text, 4) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A good question. The answer is B", "B"),  # the article "A" is not option A
        ("A good question about (B) and its limits", "B"),
        ("A key idea: B holds.", "B"),
        ("The answer is a good one", None),  # lower-case "a" followed by a word is English
        ("Between A and B, I pick C", None),  # several bare letters: refuse to guess
        ("I am not sure.", None),
        ("", None),
        ("Answer: E", None),  # out of range for 4 options
    ],
)
def test_extract_choice_traps(text: str, expected: str | None) -> None:
    assert extract_choice(text, 4) == expected


def test_extract_choice_marker_beats_leading_letter_and_last_marker_wins() -> None:
    assert extract_choice("B. hmm, no. Answer: D", 4) == "D"
    assert extract_choice("The answer is A... wait, the answer is C.", 4) == "C"


def test_extract_choice_ten_options() -> None:
    assert extract_choice("Answer: J", 10) == "J"
    assert extract_choice("The answer is (I)", 10) == "I"
    assert extract_choice("I think it is I.", 10) == "I"  # the pronoun "I" is skipped
    assert extract_choice("I think so.", 10) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", 1234.0),
        ("x = -3.5", -3.5),
        ("So it is 391.", 391.0),
        ("between 17-23", 23.0),  # a hyphen after a digit is a range, not a sign
        ("12 then 0.5", 0.5),
        ("no digits", None),
    ],
)
def test_extract_number(text: str, expected: float | None) -> None:
    assert extract_number(text) == expected


def test_extract_boxed_nested_and_unbalanced() -> None:
    assert extract_boxed("so \\boxed{\\frac{1}{2}} and \\boxed{7}") == "7"
    assert extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{12") is None
    assert extract_boxed("plain") is None


def test_grade_choice() -> None:
    assert grade("Answer: C. Because…", "C", "choice")
    assert grade("answer: c", "c", "choice")
    assert not grade("Answer: B", "C", "choice")
    assert grade("Answer: H", "H", "choice", n_options=10)
    assert not grade("Answer: H", "H", "choice", n_options=4)


def test_grade_number_reads_the_committed_answer_not_the_reasoning() -> None:
    # The last number is 3, but the reply committed to 391.
    assert grade("Answer: 391. Since 17*20 + 17*3 = 391", "391", "number")
    assert grade("Answer: 391. Computed as 17*20 + 17*3", "391", "number")
    assert grade("17*23 = \\boxed{391}, not 390", "391", "number")
    assert grade("It is 1,234.", "1234", "number")
    assert grade("Answer: -3.50", "-3.5", "number")
    assert not grade("Answer: 390", "391", "number")
    assert not grade("no idea", "391", "number")
