"""A query is embedded by its question alone, as the router's memory is."""

from __future__ import annotations

from skills.datasets import LabelledQuestion, format_prompt
from skills.question_text import question_part


def test_a_formatted_prompt_gives_back_its_question() -> None:
    q = LabelledQuestion("q1", "Which gas do plants absorb?", ["Oxygen", "Carbon dioxide"], "B", "biology")
    assert question_part(format_prompt(q)) == "Which gas do plants absorb?"


def test_labels_option_styles_and_reply_lines_are_dropped() -> None:
    assert question_part("Question: What is 2 + 2?\n(a) 3\n(b) 4") == "What is 2 + 2?"
    assert question_part("What is 2 + 2?\nOptions: 3, 4") == "What is 2 + 2?"
    assert question_part("What is 2 + 2?\nReply with 'Answer: <number>' and then one sentence.") == "What is 2 + 2?"


def test_free_text_stays_whole_and_nothing_is_emptied() -> None:
    text = "Explain how a transistor amplifies a signal.\nKeep it short."
    assert question_part(text) == text
    assert question_part("A. an option with no question") == "A. an option with no question"


def test_a_stem_s_own_statements_stay_with_it() -> None:
    """"I. …" lines read as options cut the statements off; a stem opening "(a) …" left nothing,
    so the whole prompt, options and all, was embedded: apart from the question in the memory."""
    stem = "Which statements are true?\nI. Water boils at 100 C.\nII. Ice floats."
    assert question_part(f"{stem}\nA. I only\nB. II only\nC. Both") == stem
    lettered = "(a) Sugar dissolves.\n(b) Sand does not.\nWhich is right?"
    assert question_part(f"{lettered}\nOptions:\nA. (a)\nB. (b)") == lettered
