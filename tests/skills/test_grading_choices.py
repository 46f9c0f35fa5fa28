"""Choice extraction: which marker a reply commits with, and when it commits to none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    [
        "A and B are both plausible",
        "Answer: A or B",
        "The answer is (B)/(C)",
        "Answer: C or D. Answer: B or C",
        "Answer: A, B",  # a comma lists letters as "or" does
        "Answer: A, C and D",
    ],
)
def test_a_hedge_between_letters_commits_to_none(text: str) -> None:
    assert extract_choice(text, 4) is None


@pytest.mark.parametrize(
    "text", ["(A)/(C)", "(B) or (C)", "(B), (D)", "B) and D)", "(B)/(D) are both right", "(b) or (c)"]
)
def test_letters_listed_up_front_are_no_pick(text: str) -> None:
    assert extract_choice(text, 4) is None  # the opening letter used to be read: "(B) or (C)" graded B right


def test_a_list_up_front_leaves_the_pick_to_the_rest_of_the_reply() -> None:
    assert extract_choice("B, C and D are wrong; A is correct", 4) == "A"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B, because A is wrong", "B"),
        ("C, since B is false", "C"),
        ("b) Paris", "B"),
        ("(b)", "B"),
        ("b. Paris", "B"),
        ("**b**", "B"),
        ("C, I think", "C"),
        ("I, for one, choose option B", "B"),  # "I," opens with the pronoun
    ],
)
def test_an_opening_letter_after_a_comma_or_in_lower_case_is_read(text: str, expected: str) -> None:
    assert extract_choice(text, 10) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a) Incorrect: too small.\nb) Incorrect: wrong sign.\nc) Correct.\nSo the correct option is C.", "C"),
        ("(a) is wrong since it ignores friction. (b) is wrong too. (c) fits, so I choose option C.", "C"),
        ("A) Incorrect\nB) Incorrect\nC) Correct\nThe correct option is C.", "C"),
        ("(i) consider x; (ii) consider y. I choose option B", "B"),
        ("A\nThe others are wrong.", "A"),  # one opening letter, no walk: still the pick
    ],
)
def test_a_reply_that_walks_through_the_options_is_read_for_its_pick(text: str, expected: str) -> None:
    """Going through the options in turn names the first to judge it: read as a pick of A (or I)."""
    assert extract_choice(text, 10) == expected


@pytest.mark.parametrize("text", ["a dog is an animal", "e.g. a cat", "i.e. the first", "a", "b"])
def test_a_lower_case_opening_without_a_closing_mark_is_english(text: str) -> None:
    assert extract_choice(text, 10) is None


@pytest.mark.parametrize("text", ["answer:" + " " * 5000 + "x", "| Option" + " " * 5000 + "|", " " * 20000 + "\n"])
def test_a_long_blank_stretch_is_read_and_ends(text: str) -> None:
    """The marker's five whitespace runs could each take any share of one blank stretch: a
    feedback answer of 208 characters took 53 s to read, 5,000 would take days. Read in a child
    process (the regex engine holds the GIL: a thread could not be timed out), so a regression
    fails here instead of hanging the suite."""
    code = "import sys; from skills.grading import extract_choice; print(extract_choice(sys.stdin.read(), 10))"
    read = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2], check=True)
    assert read.stdout.strip() == "None"
