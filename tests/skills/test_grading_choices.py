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
