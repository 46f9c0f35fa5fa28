"""Which questions have lettered options (and so are decided by the `auto` vote): option lines
as experts/replay.py reads them, and text that only looks like them."""

from __future__ import annotations

from experts.prompt_text import option_texts
from orchestrator.aggregation.vote import option_count, vote_decides
from skills.question_text import question_part

DIALOGUE = "A: Where are you going?\nB: To the store.\nWhat does B mean?"


def test_a_dialogue_s_speakers_are_not_options() -> None:
    assert option_count(DIALOGUE) == 0
    assert not vote_decides("auto", DIALOGUE)
    assert option_count("Read this.\n" + DIALOGUE) == 0  # a question after the lines: they are its material


def test_lower_case_options_count() -> None:
    assert option_count("Which city?\n(a) Paris\n(b) London\n(c) Rome") == 3
    assert option_count("Which city?\na. Paris\nb) London\n\nAnswer with the letter.") == 2


def test_the_last_run_in_order_from_a_counts() -> None:
    text = "A: Hi.\nB: Hello.\nWhat does B do?\nA. Greets\nB. Leaves\nC. Sleeps\nReply with 'Answer: <letter>'."
    assert option_count(text) == 3
    assert option_count("Q\nB. x\nA. y\nB. z") == 2  # the run from A; a B before it opens none


def test_an_option_s_text_may_run_over_lines() -> None:
    text = "Which program?\nA. x\nB. list1 <- Sort(list1)\n list2 <- Sort(list2)\nC. y\nReply with 'Answer: <letter>'."
    assert option_count(text) == 3


def test_the_options_counted_are_the_ones_a_query_s_question_is_cut_from() -> None:
    """One rule (`experts.prompt_text`) for the vote, the embedded question and the replay lookup."""
    text = "Read this.\nA: Hi.\nB: Hello.\nA: Bye.\nWhy does A leave?"
    assert option_count(text) == 0 and question_part(text) == text
    assert option_count(f"{text}\nA. Late\nB. Tired") == 2 and question_part(f"{text}\nA. Late\nB. Tired") == text


def test_option_texts_are_the_counted_options_without_their_letters() -> None:
    text = "Which program?\nA. x\nB. list1 <- Sort(list1)\n list2 <- Sort(list2)\nC. y\nReply with 'Answer: <letter>'."
    assert option_texts(text) == ["x", "list1 <- Sort(list1) list2 <- Sort(list2)", "y"]  # not the reply line
    assert option_texts("A: Hi.\nB: Hello.\nWhat does B do?\nA. Greets\nB) Leaves") == ["Greets", "Leaves"]
    assert option_texts(DIALOGUE) == [] and option_texts("What is 2+2?") == []
