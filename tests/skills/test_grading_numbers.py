"""Number extraction beyond plain decimals: the signs, fractions and exponents models write,
and the answer a reply commits to when its answer line restates the sum."""

from __future__ import annotations

import math

import pytest

from skills.grading import extract_answer_number, extract_number, grade


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: \u22125", -5.0),  # the Unicode minus sign is a minus
        ("\\boxed{\\frac{1}{2}}", 0.5),
        ("Answer: $-\\dfrac{3}{4}$", -0.75),
        ("Answer: 3/4", 0.75),
        ("Answer: 1.5e3", 1500.0),
        ("Answer: 2.5E-2 mol", 0.025),
    ],
)
def test_number_forms_are_read_whole(text: str, expected: float) -> None:
    assert extract_answer_number(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["\\boxed{\\frac{\\pi}{2}}", "Answer: x^{2}", "Answer: 1/0"])
def test_a_piece_of_a_form_is_no_number(text: str) -> None:
    assert extract_answer_number(text) is None  # not 2 (the denominator, the exponent) nor 1


def test_signs_and_fractions_no_longer_grade_as_their_pieces() -> None:
    assert not grade("Answer: \u22125", "5", "number")
    assert grade("Answer: \u22125", "-5", "number")
    assert not grade("\\boxed{\\frac{1}{2}}", "2", "number")
    assert grade("It is 3/4.", "0.75", "number")
    assert extract_number("between 17-23 or 1,234") == 1234.0  # plain forms read as before


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 17*23 = 391.",
        "Answer: 17 * 23 = 391",
        "The answer to 17*23 is 391.",  # the restated sum's operands state no result
        "The answer is (17 × 23) = 391 apples",
        "Answer: 391 = 17*23",
        "Answer: 391. 17*23 is 391",
        "Answer: 391 because 17*20 = 340 and 340 + 51 makes it",  # the reasoning after it is not read
        "Answer:\n391",
    ],
)
def test_the_answer_line_s_result_not_its_first_operand(text: str) -> None:
    assert extract_answer_number(text) == 391.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: 1.5 × 10^3", 1500.0),  # read as operands: no result, then the last number, 3
        ("Answer: 1.1 \\times 10^{3} J", 1100.0),
        ("Answer: 2.5x10^-2 mol", 0.025),
        ("Answer: 1 × 10^999", math.inf),  # past a float's range: inf, not an exception
    ],
)
def test_scientific_notation_is_one_number(text: str, expected: float) -> None:
    assert extract_answer_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It is 391 (the product of 17 and 23).", 391.0),
        ("The result is 391, not 400.", 391.0),
        ("17 × 23 (which is 391)", 391.0),  # after an expression the parenthesis is its result
        ("It is not 400.", None),
    ],
)
def test_the_last_number_fallback_skips_asides_and_rejected_numbers(text: str, expected: float | None) -> None:
    assert extract_answer_number(text) == expected
