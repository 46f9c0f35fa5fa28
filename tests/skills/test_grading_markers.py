"""Which marker a reply commits with when its explanation mentions other options, answers and
letters, and the number forms and sizes the answer line must still read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from skills.grading import extract_answer_number, extract_choice, grade


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Option A: incorrect. Option B: correct. Option C: incorrect. Option D: incorrect.", "B"),
        ("**B**\nOption C would be true only if the gas were ideal.", "B"),
        ("B is correct. Option D is a common misconception.", "B"),
        ("Option A is wrong. Option B is right. Option C is wrong. Option D is wrong. So B.", "B"),
        ("I choose option C.", "C"),
        ("Option C is the correct answer.", "C"),
        ("The best choice is A.", "A"),
    ],
)
def test_an_option_counts_only_when_the_reply_commits_to_it(text: str, expected: str) -> None:
    assert extract_choice(text, 4) == expected


@pytest.mark.parametrize("text", ["Option A is plausible. Option C is tempting.", "Option B or option D, hard to say."])
def test_mentions_of_several_options_commit_to_none(text: str) -> None:
    assert extract_choice(text, 4) is None


@pytest.mark.parametrize(
    "text",
    [
        "Answer: B\nResponse 1's answer (C) is wrong, as Responses 2 and 3 show.",
        "Answer: B\n\nExplanation: The answer C is incorrect because it ignores friction.",
        "Answer: B. Option C is a distractor; answer C would imply X.",
        "**Final Answer:** B\nUnlike Response 3, whose answer is D, B accounts for friction.",
    ],
)
def test_the_answer_line_outranks_an_answer_its_explanation_mentions(text: str) -> None:
    assert extract_choice(text, 4) == "B"


def test_the_answer_line_s_number_outranks_one_its_explanation_mentions() -> None:
    assert extract_answer_number("Answer: 391\nResponse 2's answer of 401 adds wrongly.") == 391.0
    assert extract_answer_number("Some work.\nAnswer: 12\nThe answer 15 in the draft was wrong.") == 12.0


@pytest.mark.parametrize(
    "text", ["Answer: Vitamin D", "Answer: B12", "Answer: Hepatitis B", "Answer: None of the above"]
)
def test_an_answer_line_naming_a_text_not_a_letter_commits_to_none(text: str) -> None:
    assert extract_choice(text, 4) is None


@pytest.mark.parametrize(
    "text", ["Answer: The correct option is B", "Answer: Option B", "Answer: $\\boxed{B}$", "Answer: C, I think"]
)
def test_an_answer_line_still_reads_an_option_it_names_after_other_words(text: str) -> None:
    assert extract_choice(text, 4) == ("C" if text.endswith("think") else "B")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: 17x23=391", 391.0),
        ("Answer: 17X23=391", 391.0),
        ("Answer: $12\\times3=36$", 36.0),
        ("Answer: 2^10 = 1024", 1024.0),
        ("Answer: 3\\cdot5=15", 15.0),
    ],
)
def test_an_operator_written_without_spaces_keeps_its_right_operand(text: str, expected: float) -> None:
    assert extract_answer_number(text) == expected


def test_a_variable_s_exponent_is_still_no_number() -> None:
    assert extract_answer_number("Answer: x^2") is None


@pytest.mark.parametrize(
    "text", ["What is 17*23? " + "The answer is 17*23. " * 20000, "Answer: " * 40000, "answer: ( " * 40000]
)
def test_a_reply_with_many_answer_markers_is_read_in_linear_time(text: str) -> None:
    """Each marker used to rescan everything after it: 2,000 looping "The answer is 17*23."
    took 6.6 s, 20,000 would take ten minutes. Read in a child process so a regression fails
    on the timeout instead of hanging the suite."""
    code = ("import sys; from skills.grading import extract_answer_number, extract_choice; t = sys.stdin.read(); "
            "print(extract_answer_number(t), extract_choice(t, 10))")
    read = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True, timeout=20,
                          cwd=Path(__file__).resolve().parents[2], check=True)
    assert read.stdout.split()[0] in {"23.0", "None"}


@pytest.mark.parametrize("text", ["答案：Ｂ", "Answer: Ｂ", "Ａｎｓｗｅｒ: B"])
def test_fullwidth_letters_read_as_their_ascii_forms(text: str) -> None:
    assert extract_choice(text, 4) == "B"


def test_a_gold_number_with_a_plus_sign_parses() -> None:
    assert grade("Answer: 5", "+5", "number")
    assert not grade("Answer: -5", "+5", "number")
