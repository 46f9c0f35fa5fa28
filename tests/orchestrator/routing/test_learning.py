"""Lessons extend the k-NN memory, which keeps the newest `max_rows` rows from traffic and every
row from profiling."""

from __future__ import annotations

import numpy as np

from orchestrator.routing.evidence import RoutingEvidence, typical_options
from orchestrator.routing.learning import CompetitionPolicy, Lesson, learned, scored


def profiled(n: int) -> RoutingEvidence:
    emb = np.eye(8, dtype=np.float32)[:n]
    return RoutingEvidence({"a": {"x": 1.0}, "b": {"x": -1.0}}, emb, {"a": np.ones(n, bool), "b": np.zeros(n, bool)},
                           [f"p{i}" for i in range(n)], {"a": ["A"] * n, "b": ["B"] * n})


def lesson(i: int) -> Lesson:
    emb = np.full(8, 0.1 * (i + 1), dtype=np.float32)
    return Lesson(emb, ("x",), {"a": i % 2 == 0}, {"a": "ABCDEFGHIJ"[i]})


def test_the_memory_keeps_the_newest_learned_rows_and_every_profiled_one() -> None:
    grown = profiled(3)
    for i in range(5):
        grown = learned(grown, [lesson(i)], max_rows=2)
    assert grown.learned_rows == 2 and grown.question_embeddings is not None
    assert len(grown.question_embeddings) == 5 and grown.labels is not None and len(grown.labels) == 5
    assert np.allclose(grown.question_embeddings[:3], np.eye(8)[:3])  # profiling's rows, all kept
    assert np.allclose(grown.question_embeddings[3:, 0], [0.4, 0.5])  # the two newest lessons
    assert grown.correct is not None and grown.correct["a"].tolist() == [True, True, True, False, True]
    assert grown.observed is not None and grown.observed["b"].tolist() == [True, True, True, False, False]
    assert grown.choices is not None and grown.choices["a"] == ["A", "A", "A", "D", "E"]
    assert grown.profiles["a"]["x"] == 1.0 + 1 - 1 + 1 - 1 + 1  # profiles keep every lesson


def test_a_lesson_is_labelled_by_profiled_rows_live_as_at_a_restart() -> None:
    """Live, a lesson's topic came from its nearest rows with earlier lessons among them; a
    restart adds every lesson at once and labels each against the profiled rows: the same
    lesson routed under one topic until the restart and another after it."""
    def near(*xs: float) -> Lesson:
        return Lesson(np.array([*xs, *[0.0] * (8 - len(xs))], dtype=np.float32), ("x",), {"a": True})

    first, second = near(1.0), near(0.6, 0.8)  # second: nearest p1, then p0 and the first lesson alike
    live = learned(learned(profiled(3), [first]), [second])
    assert live.labels == learned(profiled(3), [first, second]).labels == ["p0", "p1", "p2", "p0", "p1"]


def test_lessons_past_the_cap_given_at_once_count_in_profiles_alone(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A restart hands every stored lesson over at once: only the newest `max_rows` are stacked
    and labelled (with the labels' product a block at a time), as if they had come one by one."""
    monkeypatch.setattr("orchestrator.routing.learning.LABEL_BLOCK", 1)
    one_by_one = profiled(3)
    for i in range(5):
        one_by_one = learned(one_by_one, [lesson(i)], max_rows=2)
    at_once = learned(profiled(3), [lesson(i) for i in range(5)], max_rows=2)
    assert at_once.question_embeddings is not None and one_by_one.question_embeddings is not None
    assert np.array_equal(at_once.question_embeddings, one_by_one.question_embeddings)
    assert at_once.labels == one_by_one.labels == ["p0", "p1", "p2", "p0", "p0"]
    assert at_once.learned_rows == 2 and at_once.profiles == one_by_one.profiles
    assert at_once.correct is not None and at_once.correct["a"].tolist() == [True, True, True, False, True]


def test_under_the_cap_nothing_is_dropped() -> None:
    grown = learned(profiled(3), [lesson(i) for i in range(4)], max_rows=10)
    assert grown.learned_rows == 4 and grown.question_embeddings is not None and len(grown.question_embeddings) == 7


def test_typical_options_is_the_median_over_lettered_questions_and_lessons_keep_it() -> None:
    assert typical_options([4, 4, 10, 0, 0, 0]) == 4 and typical_options([10, 9, 10]) == 10
    assert typical_options([0, 1]) is None and typical_options([]) is None
    evidence = profiled(3)
    evidence.options = 4
    assert learned(evidence, [lesson(0)]).options == 4


def test_a_gold_answer_is_read_as_the_answers_are() -> None:
    """Feedback's `correct: true` judges against the stored answer, which is rarely a bare letter:
    "B. Paris" and "The correct answer is (B)." both mean B."""
    answers = {"right": "Answer: B", "wrong": "Answer: C", "none": "I cannot tell."}
    for gold in ("B", "B. Paris", "The correct answer is (B).", " b "):
        marks, letters, ref = scored(answers, {}, None, gold)
        assert ref == "B" and marks == {"right": True, "wrong": False, "none": False}, gold


LETTERED = ("Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nC) Nitrogen\nD. Vitamin C\n"
            "Reply with 'Answer: X'.")


def test_a_gold_answer_given_as_an_option_s_text_is_that_option() -> None:
    """`{"answer": "Carbon dioxide"}` on a lettered question became "CARBON DIOXIDE", which no
    letter equals: every expert was marked wrong. The option's text names its letter (an
    option's text is read before a letter in it: "Vitamin C" is D, not C)."""
    answers = {"right": "Answer: B", "wrong": "Answer: C", "none": "I cannot tell."}
    for gold in ("Carbon dioxide", " carbon  DIOXIDE. ", "B"):
        marks, _, ref = scored(answers, {}, None, gold, LETTERED)
        assert ref == "B" and marks == {"right": True, "wrong": False, "none": False}, gold
    vitamin = scored({"d": "Answer: D", "c": "Answer: C"}, {}, None, "Vitamin C", LETTERED)
    assert vitamin[::2] == ({"d": True, "c": False}, "D")


def test_a_gold_answer_that_names_no_option_marks_no_one() -> None:
    """Junk (".") or a text no option has, against lettered answers, taught every expert it was
    wrong; it is no reference now: no marks (feedback refuses it, `services/feedback.py`)."""
    answers = {"right": "Answer: B", "wrong": "Answer: C"}
    for gold, question in ((".", LETTERED), ("Paris", LETTERED), ("Carbon dioxide", "")):
        assert scored(answers, {}, None, gold, question)[::2] == ({}, None), (gold, question)
    free = scored(answers, {}, None, "Carbon dioxide", "Which gas do plants absorb?")  # no options: free text
    assert free[::2] == ({"right": False, "wrong": False}, "carbon dioxide")
    assert scored({"a": "42", "b": "41"}, {}, None, ".")[::2] == ({}, None)  # free text: nothing left to compare
    for gold in ("?", "!!", "-", "\u2014", "()", "**"):  # taken as a reference, they marked every expert wrong
        assert scored({"a": "42", "b": "41"}, {}, None, gold)[::2] == ({}, None), gold


def test_a_lone_answer_is_no_consensus_and_marks_no_one() -> None:
    """One expert's answer agreed with itself: scored against it, an explorer answering alone was
    marked right. With gold it is marked as ever."""
    for text in ("Answer: C", "42"):
        marks, _, ref = scored({"a": text}, {"a": 1.0}, None)
        assert (marks, ref) == ({}, None), text
    assert scored({"a": "Answer: C"}, {"a": 1.0}, None, "C")[0] == {"a": True}


def test_a_tie_at_the_top_is_no_consensus() -> None:
    """Equal support was settled by letter order (A over B): an exploration, which always
    teaches, marked one side right on no evidence. Lettered or free text, a tie marks no one."""
    even = {"a": 1.0, "b": 1.0}
    assert scored({"a": "Answer: B", "b": "Answer: A"}, even, None)[::2] == ({}, None)
    assert scored({"a": "41", "b": "42"}, even, None)[::2] == ({}, None)
    marks, _, ref = scored({"a": "Answer: B", "b": "Answer: A", "c": "Answer: B"}, even | {"c": 0.5}, None)
    assert ref == "B" and marks == {"a": True, "b": False, "c": True}


def test_one_lettered_answer_among_several_is_no_consensus() -> None:
    """The replies without a letter cast no vote, so the one letter agreed with itself: its
    expert was marked right on its own vote and the others wrong. It takes two letters."""
    even = {"a": 1.0, "b": 1.0, "c": 1.0}
    lone = {"a": "Answer: B", "b": "I cannot tell from the question.", "c": "It depends."}
    assert scored(lone, even, None)[::2] == ({}, None)
    two = scored(lone | {"c": "Answer: B"}, even, None)
    assert two[::2] == ({"a": True, "b": False, "c": True}, "B")
    assert scored(lone, even, None, "B")[0] == {"a": True, "b": False, "c": False}  # gold marks as ever


def test_an_explored_expert_is_marked_against_the_others_consensus_not_its_own() -> None:
    """An unseen expert's prior weight outweighed each profiled one, so where the profiled ones
    split, its own letter was the consensus and it was marked right on its own say."""
    weights = {"a": 1.0, "b": 0.9, "c": 0.8, "new": 2.2}
    answers = {"a": "Answer: A", "b": "Answer: B", "c": "Answer: A", "new": "Answer: B"}
    assert scored(answers, weights, None)[2] == "B"  # the explorer's weight carries its own letter
    marks, _, ref = scored(answers, weights, None, explored={"new"})
    assert ref == "A" and marks == {"a": True, "b": False, "c": True, "new": False}
    lone = {"a": "Answer: A", "new": "Answer: A"}
    assert scored(lone, weights, None, explored={"new"})[::2] == ({}, None)  # one voter is no consensus
    assert scored(lone, weights, None, "A", explored={"new"})[0] == {"a": True, "new": True}  # gold as ever


def test_free_text_numbers_are_compared_as_numbers() -> None:
    """Whole strings were compared: feedback {"answer": "391"} marked "17 * 23 = 391." and "The
    answer is 391." wrong (profiling's `grade` takes both), `correct: true` on a final worded
    otherwise marked the experts that said 391 wrong, and 391 said three ways was no consensus."""
    answers = {"eq": "17 * 23 = 391.", "said": "The answer is 391.", "bare": "391", "off": "It is 400"}
    right = {"eq": True, "said": True, "bare": True, "off": False}
    for gold in ("391", "The answer is 391.", "Answer: 391.0"):
        assert scored(answers, {}, None, gold)[0] == right, gold
    marks, _, ref = scored(answers, {}, None)
    assert marks == right and ref is not None and float(ref) == 391
    assert scored({"a": "0", "b": "Answer: 0."}, {}, None, "0")[0] == {"a": True, "b": True}  # 0 is a number too
    texts = {"a": "Paris.", "b": " paris", "c": "Lyon"}  # no number: the normalised text, as before
    assert scored(texts, {}, None)[::2] == ({"a": True, "b": True, "c": False}, "paris")


def test_an_empty_reply_casts_no_free_text_vote() -> None:
    """An empty reply counted as the second voter but gave no support: the one real answer was the
    consensus on its own say (marked right, the others wrong). It takes two non-empty answers."""
    even = {"a": 1.0, "b": 1.0}
    assert scored({"a": "Paris", "b": ""}, even, None)[::2] == ({}, None)
    assert scored({"a": "Paris", "b": "...", "new": "London"}, even, None, explored={"new"})[::2] == ({}, None)
    marks, _, ref = scored({"a": "Paris", "b": "", "c": "paris."}, even | {"c": 1.0}, None)
    assert ref == "paris" and marks == {"a": True, "b": False, "c": True}
    assert scored({"a": "Paris", "b": ""}, even, None, "Paris")[0] == {"a": True, "b": False}  # gold as ever


def test_an_exploration_teaches_by_consensus_where_a_competition_waits_for_feedback() -> None:
    """The default keeps a consensus-scored competition out (the whole pool's crowd marks the expert
    right against it wrong); an exploration's consensus is the recruited top k's, and it teaches."""
    emb = np.ones(8, dtype=np.float32)
    marks, choices = {"a": True, "b": False, "new": True}, {"a": "A", "b": "B", "new": "A"}
    assert CompetitionPolicy().teaches(Lesson(emb, ("x",), marks, choices, "explore", "consensus"))
    competition = Lesson(emb, ("x",), marks, choices, "competition", "consensus")
    assert not CompetitionPolicy().teaches(competition)
    assert CompetitionPolicy(consensus_teaches=True).teaches(competition)


def test_a_slot_given_back_never_lets_the_cap_be_passed_within_a_minute() -> None:
    """Giving back took the newest slot: with one taken at 0 and one at 59 and one given back, the
    one kept was 0's, gone from the window at 60, and competitions ran at 59, 60.5 and 61."""
    now = [0.0]
    policy = CompetitionPolicy(per_minute=2, clock=lambda: now[0])
    fired = []
    for t in (0.0, 59.0):
        now[0] = t
        fired.append(policy.fires(1, f"q{t}", rate=1.0))
    policy.give_back(1)
    for t in (60.5, 61.0):
        now[0] = t
        fired.append(policy.fires(1, f"q{t}", rate=1.0))
    assert fired == [True, True, True, False]


def test_a_free_text_question_s_answers_are_no_letters_and_none_given_reads_every_letter() -> None:
    """Letters were read with all of A-P valid whatever the question: "Answer: I think 391" was a
    pick of "I", the reference, and "Answer: 391" was marked wrong. A question without lettered
    options is free text now; without a question (bench/learning.py's replies), every letter as before."""
    answers = {"a": "Answer: I think 391", "b": "Answer: I believe it is 391", "c": "Answer: 391"}
    assert scored(answers, {}, None, question="What is 17*23?") == (
        {"a": True, "b": True, "c": True}, {"a": None, "b": None, "c": None}, "391.0")
    assert scored(answers, {}, None) == ({"a": True, "b": True, "c": False}, {"a": "I", "b": "I", "c": None}, "I")
    beyond = {"a": "Answer: K", "b": "Answer: K", "c": "Answer: B"}  # K: no option of LETTERED's
    assert scored(beyond, {}, None)[1:] == ({"a": "K", "b": "K", "c": "B"}, "K")
    assert scored(beyond, {}, None, question=LETTERED)[::2] == ({}, None)  # one letter among the options
