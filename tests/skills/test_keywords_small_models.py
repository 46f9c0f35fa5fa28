"""Keyword replies of a small keyword model (SmolLM2-135M, 32 tokens, the paper's prompt): the
texts below are its real replies, from a hunt that found them parsed into skills such as
'such as cyt', 'psychology: 112243' and words cut by the token limit ('behavioral')."""

from __future__ import annotations

from experts.types import FinishReason, Generation
from skills.keywords import consolidate, keywords_from_generations, parse_keywords

# (finish_reason, text): one question's three samples each, as SmolLM2 wrote them
RUBELLA = [
    ("length", "The rubella syndrome is a psychological condition caused by the presence of rubella virus in "
               "pregnant women. It can also be caused by other viruses, such as cyt"),
    ("length", "Rubella syndrome || Psychology, virology, behavioral theory, political science, global business  "
               "\nKeywords: psychology, virology, political science, global business"),
    ("length", "1. Psychology: Keyword: psychology\n2. Virology: Keyword: virology\n3. Behavioral Theory: "
               "Keyword: behavioral theory\n4"),
]
LOCKE = [
    ("length", "The core knowledge and subject matter needed to solve this problem are: Psychology, virology, "
               "behavioral theory, diplomacy, political science, property law, business, mathematical"),
    ("length", "<<Principlés de la philosophie et les problèmes de la politique du pays**\n\nKeywords: psychology, "
               "virology, behavioral"),
]
NUMBERED = "1. Psychology: 1.1.2.2.4.3.\n\n2. Virology: 2.1.1.1."
CUT_AFTER_MARKER = ("Sure, I'd be happy to provide an answer to your question.\nKeywords: Psychology, virology, "
                    "behavioral theory, diplomacy, business, policy law")


def generations(qid: str, replies: list[tuple[FinishReason, str]]) -> list[Generation]:
    return [Generation(request_id=f"{qid}#kw{j}", text=text, finish_reason=finish)
            for j, (finish, text) in enumerate(replies)]


def test_a_reply_cut_by_the_token_limit_loses_its_last_item() -> None:
    """'behavioral' (of "behavioral theory") and 'mathematical' were kept as keywords."""
    assert parse_keywords(LOCKE[1][1], cut=True) == ["psychology", "virology"]
    assert parse_keywords(CUT_AFTER_MARKER, cut=True) == [
        "psychology", "virology", "behavioral theory", "diplomacy", "business"]
    assert "mathematical" not in parse_keywords(LOCKE[0][1], cut=True)
    assert parse_keywords(RUBELLA[0][1], cut=True) == []  # 'such as cyt' was its keyword
    assert parse_keywords("Keywords: algebra, geometry\nThese cover the que", cut=True) == ["algebra", "geometry"]
    assert parse_keywords(LOCKE[1][1]) == ["psychology", "virology", "behavioral"]  # not cut: read as written


def test_keywords_from_generations_reads_finish_reason_length_as_cut() -> None:
    replies: list[tuple[FinishReason, str]] = [("length", LOCKE[1][1]), ("length", LOCKE[1][1])]
    assert keywords_from_generations(["q"], generations("q", replies)) == {"q": ["psychology", "virology"]}
    replies = [("stop", LOCKE[1][1]), ("stop", LOCKE[1][1])]
    assert keywords_from_generations(["q"], generations("q", replies))["q"][-1] == "behavioral"


def test_an_item_with_a_colon_is_a_label_and_its_text_not_a_keyword() -> None:
    """SmolLM2's numbered "Psychology: 1.1.2.2.4.3." became the skill 'psychology: 112243'."""
    assert parse_keywords(NUMBERED) == []
    assert parse_keywords("Keywords: algebra, note: geometry") == ["algebra"]
    assert parse_keywords("Keywords：代数，几何") == ["代数", "几何"]  # the marker's own colon is no item's


def test_the_keywords_are_is_a_marker_in_any_case() -> None:
    """Only 'calculus' was read: "the keywords are: algebra" was one item, over 20 characters."""
    assert parse_keywords("The keywords are: algebra, calculus") == ["algebra", "calculus"]
    assert parse_keywords("THE KEYWORDS ARE: Algebra, Calculus") == ["algebra", "calculus"]
    assert parse_keywords("keywords: algebra, calculus") == ["algebra", "calculus"]


def test_with_no_agreement_a_sample_with_a_marker_is_taken_before_prose() -> None:
    """The marker-less prose of sample 0 ('such as cyt') was taken over sample 1's keyword line."""
    found = keywords_from_generations(["q"], generations("q", RUBELLA))["q"]
    assert found == ["psychology", "virology", "political science"]  # the marked sample, its cut item dropped
    assert consolidate([["prose"], ["law", "tax"]], marked=[False, True]) == ["law", "tax"]
    assert consolidate([["law"], ["tax"]], marked=[True, True]) == ["law"]  # both marked: the first
    assert consolidate([["prose"], ["tax"]], marked=[False, False]) == ["prose"]  # none: the first as before
    assert consolidate([["prose"], [], ["tax"]], marked=[False, True]) == ["prose"]  # a marked empty is no sample

