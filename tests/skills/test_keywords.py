"""Keyword prompt, parsing and consolidation in the paper's format."""

from __future__ import annotations

from experts.types import Generation
from skills.keywords import (
    consolidate,
    keyword_prompt,
    keyword_requests,
    keywords_from_generations,
    parse_keywords,
    read_reply,
)


def test_prompt_is_the_papers() -> None:
    prompt = keyword_prompt("What is 2+2?")
    assert prompt.startswith("Question: What is 2+2?\nWhat are the core knowledge, subjects")
    assert "List 2-5 keywords separated in comma." in prompt
    assert prompt.endswith("Follow this format: Keywords: <keyword1>, <keyword2>...")


def test_parse_paper_format() -> None:
    text = "Keywords: Virology, Microbiology., immune response"
    assert parse_keywords(text) == ["virology", "microbiology", "immune response"]


def test_parse_takes_text_after_last_marker_and_first_line_only() -> None:
    text = "Sure! Keywords: x\n**Keywords:** Property Law, contracts\nExplanation: because"
    assert parse_keywords(text) == ["property law", "contracts"]


def test_parse_reads_the_last_marker_that_gives_keywords_one_opening_a_line_first() -> None:
    """Only the last marker was read: the prompt's format line echoed after the list gave no
    keyword (a question "got no keywords"), a "these keywords: …" remark gave junk ones."""
    echoed = "Keywords: algebra, geometry\nFollow this format: Keywords: <keyword1>, <keyword2>..."
    assert parse_keywords(echoed) == ["algebra", "geometry"]
    assert parse_keywords("Keywords:\n- algebra\n- geometry\n\nThese keywords: cover it.") == ["algebra", "geometry"]
    assert parse_keywords("Keywords: math\n\nKeywords:") == ["math"]
    assert parse_keywords("Sure! Keywords: optics, waves") == ["optics", "waves"]  # the only marker, mid-line
    assert parse_keywords("**Keywords:** a1, b2\n> Keywords: c3") == ["c3"]  # both open a line: the last



def test_parse_tries_a_mid_sentence_marker_when_every_opening_one_gives_nothing() -> None:
    """The prompt's format line echoed first, then the keywords after a mid-sentence marker: any
    marker opening a line hid every mid-sentence one, and the reply read no keyword at all."""
    said = "I think the keywords are: algebra, geometry"
    assert parse_keywords("Keywords: <keyword1>, <keyword2>...\n" + said) == ["algebra", "geometry"]
    assert read_reply("**Keywords:** <keyword1>\n\n" + said) == (["algebra", "geometry"], True)
    assert parse_keywords("Keywords: optics\n" + said) == ["optics"]  # an opening one that gives wins

def test_parse_drops_long_items_and_duplicates() -> None:
    text = "keywords: finance, a very long keyword that rambles on, finance, e.g. tax"
    assert parse_keywords(text) == ["finance", "eg tax"]


def test_parse_without_marker_reads_the_text() -> None:
    assert parse_keywords("algebra, arithmetic") == ["algebra", "arithmetic"]
    assert parse_keywords("") == []


def test_parse_reads_a_numbered_or_bulleted_list_one_keyword_a_line() -> None:
    assert parse_keywords("Keywords:\n1. Algebra\n2) geometry.\n3. calculus\nThese cover it.") == [
        "algebra", "geometry", "calculus"]
    assert parse_keywords("Keywords:\n- algebra\n* geometry\n\nI chose these because") == ["algebra", "geometry"]
    assert parse_keywords("Keywords: 1. algebra, 2. geometry") == ["algebra", "geometry"]
    assert parse_keywords("Keywords: algebra\n- not a keyword") == ["algebra"]  # no list started: one line


def test_parse_strips_curly_quotes_and_splits_on_semicolons_and_cjk_commas() -> None:
    assert parse_keywords("Keywords: \u201calgebra\u201d, \u2018geometry\u2019") == ["algebra", "geometry"]
    assert parse_keywords("Keywords: algebra; geometry；calculus") == ["algebra", "geometry", "calculus"]
    assert parse_keywords("Keywords：代数，几何、química") == ["代数", "几何", "química"]


def test_parse_collapses_whitespace_as_skill_names_are() -> None:
    # a profile's keys are these keywords and the vocabulary's names collapse whitespace:
    # "linear  algebra" kept its double space and matched no name, so S was 0 on that skill
    text = "Keywords: linear  algebra, number\u00a0theory,\tgraph \u2003 theory"
    assert parse_keywords(text) == ["linear algebra", "number theory", "graph theory"]


def test_parse_keeps_a_trailing_hash_as_in_c_sharp() -> None:
    assert parse_keywords("Keywords: C#, F#., **C#**, object pascal") == ["c#", "f#", "object pascal"]
    assert parse_keywords("## Keywords: #algebra, ## geometry") == ["algebra", "geometry"]  # markdown, tags
    assert parse_keywords("Keywords:\n##\nalgebra") == ["algebra"]  # a bare heading mark is no line


def test_parse_reads_a_comma_list_wrapped_onto_the_next_lines() -> None:
    assert parse_keywords("Keywords: algebra,\ngeometry, calculus\nThese cover it.") == [
        "algebra", "geometry", "calculus"]
    assert parse_keywords("Keywords: algebra, geometry\n, calculus；\n\nnumber theory") == [
        "algebra", "geometry", "calculus", "number theory"]
    assert parse_keywords("Keywords: algebra, geometry\ncalculus is needed") == ["algebra", "geometry"]


def test_parse_drops_the_prompts_placeholders_echoed_back() -> None:
    assert parse_keywords("Keywords: <keyword1>, <keyword2>...") == []
    assert parse_keywords("Keywords: <keyword1>, virology") == ["virology"]


def test_consolidate_keeps_repeated_in_first_seen_order() -> None:
    samples = [["law", "ethics"], ["ethics", "finance"], ["finance", "law"], ["tax"]]
    assert consolidate(samples) == ["law", "ethics", "finance"]
    assert consolidate([["a"], ["a"], ["a"], ["b"]], min_count=3) == ["a"]


def test_consolidate_counts_once_per_sample() -> None:
    # "law" twice in one reply is not agreement: nothing repeats, so sample 0 is the fallback.
    assert consolidate([["law", "law"], ["tax"]]) == ["law"]
    assert consolidate([["law", "law"], ["law"]]) == ["law"]


def test_consolidate_falls_back_to_first_nonempty_sample() -> None:
    assert consolidate([[], ["law", "tax"], ["virology"]]) == ["law", "tax"]
    assert consolidate([[], []]) == []
    assert consolidate([]) == []


def test_keyword_requests_ids_and_seeds() -> None:
    reqs = keyword_requests("q7", "Why?", n_samples=5, seed=10)
    assert [r.request_id for r in reqs] == [f"q7#kw{j}" for j in range(5)]
    assert [r.sampling.seed for r in reqs] == [10, 11, 12, 13, 14]
    assert all(r.sampling.temperature == 0.7 and r.sampling.max_tokens == 32 for r in reqs)
    assert reqs[0].messages[0].role == "user"
    assert reqs[0].messages[0].content == keyword_prompt("Why?")


def test_keywords_from_generations_groups_by_question() -> None:
    texts = {
        "q#1#kw0": "Keywords: algebra, logic",
        "q#1#kw1": "Keywords: algebra",
        "q#1#kw2": "Keywords: Logic, sets",
        "q2#kw1": "Keywords: law",
        "q2#kw0": "Keywords: tax",
        "other-request": "Keywords: noise",
    }
    gens = [Generation(request_id=k, text=v) for k, v in texts.items()]
    out = keywords_from_generations(["q#1", "q2", "q3"], gens)
    assert out["q#1"] == ["algebra", "logic"]
    assert out["q2"] == ["tax"]  # no agreement: sample 0 wins whatever the reply order
    assert out["q3"] == []


def test_consolidation_keeps_at_most_five_of_the_best_agreed() -> None:
    copied = ["psychology", "virology", "behavioral theory", "microbiology", "diplomacy", "finance"]
    samples = [["france", *copied], ["france", *copied[:4]], ["france", "europe", *copied]]
    assert consolidate(samples) == ["france", "psychology", "virology", "behavioral theory", "microbiology"]
    assert consolidate([["a", "b", "c", "d", "e", "f", "g"]]) == ["a", "b", "c", "d", "e"]  # no agreement: first, cut


def test_parse_takes_a_list_mark_only_at_an_item_s_start() -> None:
    """" - " or "2. " inside an item was cut as its list mark: "supplydemand", "wwhistory"."""
    assert parse_keywords("Keywords: supply - demand, economics") == ["supply - demand", "economics"]
    assert parse_keywords("Keywords: WW 2. history, politics") == ["ww 2 history", "politics"]
    assert parse_keywords("Keywords:\n- supply - demand\n2. politics") == ["supply - demand", "politics"]
