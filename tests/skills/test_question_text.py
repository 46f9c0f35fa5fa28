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


def test_a_dialogue_s_speakers_are_no_options_and_its_question_stays() -> None:
    """"A: …"/"B: …" lines were read as options: the query was cut at its last "A:" line and lost
    its question, where the vote (`option_count`, the same rule now) counts no options in it."""
    dialogue = "Read the conversation.\nA: Where were you?\nB: At the library.\nA: Until when?\nB: Midnight."
    assert question_part(f"{dialogue}\nWhy was B out late?") == f"{dialogue}\nWhy was B out late?"
    opening = "A: Can you pass the salt?\nB: Sure.\nA: Thanks.\nWhat is A asking for?"
    assert question_part(opening) == opening
    assert question_part(f"{opening}\nA. Salt\nB. Pepper") == opening  # its options still go
