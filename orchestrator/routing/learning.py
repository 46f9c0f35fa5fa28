"""The router learns from its traffic: competitions, exploration and feedback (CompeteSMoE).

CompeteSMoE (Fsoft-AIC/CompeteSMoE) now and then lets every expert of a layer answer, scores
each by its response and trains the router to predict the winners. For whole LLMs: on a sampled
share of routed queries every eligible expert answers (a competition); each answer is scored
against the gold answer where one is known (a recording's, a user's feedback), else against
the reliability-weighted consensus of all the answers (at least two experts' non-empty ones, two
with a letter where any has one, and one answer ahead: a lone answer or a tie teaches nothing). The
result is a `Lesson`: the query's embedding and skills, and each answering expert's mark.
Lessons extend the router's evidence (`learned`): the k-NN memory gains the query as a row
(marks of experts that did not answer it stay unobserved), each answering expert's skill
profile moves ±1 per skill, and competence is recomputed. An expert registered while the
service runs has no evidence yet: it is explored (answers as an extra, scored like a
competitor) until it has `CERTAIN_AFTER` observed marks.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from orchestrator.aggregation.reliability import AnswerReliability
from orchestrator.aggregation.vote import option_count, weighted_vote
from orchestrator.domain import final_answer
from orchestrator.routing.evidence import RoutingEvidence
from skills.grading import LETTERS, extract_answer_number, extract_choice
from skills.profiling import global_competence

CERTAIN_AFTER = 20  # observed marks after which an expert joins normal recruitment
MAX_LEARNED_ROWS = 20_000  # the k-NN memory keeps this many rows from traffic, the newest (profiling's all)
LABEL_NEIGHBOURS = 10  # a lesson's topic label: the commonest among its nearest remembered rows
LABEL_BLOCK = 1024  # lessons labelled per matrix product (bounds its memory)
_OPTION_TEXT = re.compile(r"^\s*\(?([A-Pa-p])[.):]\s*(.*)$")  # an option line as `option_count` reads them
Reading = TypeVar("Reading")  # what answers are compared by: a letter, a number or a text


@dataclass(frozen=True)
class Lesson:
    """What one answered query taught: each answering expert's mark (right or not) and choice."""

    embedding: np.ndarray
    skills: tuple[str, ...]
    marks: Mapping[str, bool]
    choices: Mapping[str, str | None] = field(default_factory=dict)
    source: str = "competition"  # competition | explore | feedback
    reference: str = "gold"  # what the marks were made against: gold | consensus


def learned(evidence: RoutingEvidence, lessons: Sequence[Lesson], max_rows: int = MAX_LEARNED_ROWS
            ) -> RoutingEvidence:
    """The evidence with these lessons added (see the module doc), keeping the newest `max_rows`
    learned rows; the original is unchanged."""
    if not lessons:
        return evidence
    names = sorted(set(evidence.profiles) | {n for x in lessons for n in x.marks})
    rows = lessons[-max_rows:]  # older ones would be dropped below: never stacked (they may come unembedded)
    base = evidence.question_embeddings
    n_old = 0 if base is None else len(base)
    emb = np.vstack([*([] if base is None else [base]), *[x.embedding[None, :] for x in rows]]).astype(np.float32)
    correct, observed, choices = _columns(evidence, rows, names, n_old)
    labels = _labels(evidence, emb, n_old - evidence.learned_rows)
    profiles = _profiles(evidence.profiles, lessons, names)  # every lesson: profiles are sums
    grown = RoutingEvidence(profiles, emb, correct, labels, choices, _competence(profiles), observed,
                            evidence.learned_rows + len(rows), evidence.options, evidence.option_prior)
    return _bounded(grown, max_rows)


def unmarked(evidence: RoutingEvidence, lessons: Sequence[Lesson]) -> RoutingEvidence:
    """The evidence with these lessons' marks taken back out of the profiles and competence:
    what `learned` added for them there (their rows are the caller's to cut)."""
    profiles = _profiles(evidence.profiles, lessons, list(evidence.profiles), sign=-1.0)
    return replace(evidence, profiles=profiles, competence=_competence(profiles))


def _competence(profiles: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return global_competence({n: sum(p.values()) for n, p in profiles.items()})


def _bounded(evidence: RoutingEvidence, max_rows: int) -> RoutingEvidence:
    """The evidence with at most `max_rows` learned rows, the oldest dropped: the memory does
    not grow with traffic without end (profiles and competence keep every lesson: they are sums)."""
    drop = evidence.learned_rows - max_rows
    if drop <= 0 or evidence.question_embeddings is None:
        return evidence
    start = len(evidence.question_embeddings) - evidence.learned_rows
    keep = np.r_[0:start, start + drop:len(evidence.question_embeddings)]
    labels = evidence.labels
    return replace(evidence, question_embeddings=evidence.question_embeddings[keep],
                   correct={n: c[keep] for n, c in (evidence.correct or {}).items()},
                   observed={n: o[keep] for n, o in (evidence.observed or {}).items()},
                   choices={n: [c[i] for i in keep] for n, c in (evidence.choices or {}).items()},
                   labels=None if labels is None else [labels[i] for i in keep], learned_rows=max_rows)


def _columns(evidence: RoutingEvidence, lessons: Sequence[Lesson], names: Sequence[str], n_old: int
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[str | None]]]:
    old_correct, old_seen, old_choices = evidence.correct or {}, evidence.observed or {}, evidence.choices or {}
    correct, observed, choices = {}, {}, {}
    for n in names:
        had = n in old_correct
        correct[n] = np.concatenate([old_correct[n] if had else np.zeros(n_old, bool),
                                     [bool(x.marks.get(n, False)) for x in lessons]])
        seen_old = old_seen.get(n, np.ones(n_old, bool)) if had else np.zeros(n_old, bool)
        observed[n] = np.concatenate([np.asarray(seen_old, bool), [n in x.marks for x in lessons]])
        choices[n] = [*(old_choices.get(n) or [None] * n_old), *(x.choices.get(n) for x in lessons)]
    return correct, observed, choices


def _labels(evidence: RoutingEvidence, emb: np.ndarray, n_profiled: int) -> list[str] | None:
    """Old rows keep theirs; a new lesson gets the commonest label among its nearest profiled
    rows. Not among earlier lessons too: a restart labels every lesson at once, against the
    profiled rows alone, and a lesson labelled live by its predecessors routed otherwise until then."""
    old = evidence.labels
    n_old = 0 if evidence.question_embeddings is None else len(evidence.question_embeddings)
    if not old or len(old) != n_old or n_profiled <= 0:
        return None
    nearest = _nearest_profiled(emb, n_old, n_profiled)
    return [*old, *(Counter(old[j] for j in row).most_common(1)[0][0] for row in nearest)]


def _nearest_profiled(emb: np.ndarray, n_old: int, n_profiled: int) -> np.ndarray:
    """Each new row's (from `n_old` on) LABEL_NEIGHBOURS nearest profiled rows, nearest first, a
    block of new rows at a time: a full new × old similarity matrix at 20,000 lessons was gigabytes."""
    k, out = min(LABEL_NEIGHBOURS, n_profiled), []
    for start in range(n_old, len(emb), LABEL_BLOCK):
        sims = emb[start:start + LABEL_BLOCK] @ emb[:n_profiled].T
        idx = np.sort(np.argpartition(-sims, k - 1, axis=1)[:, :k], axis=1)  # ties: the older row first
        order = np.argsort(-np.take_along_axis(sims, idx, axis=1), axis=1, kind="stable")
        out.append(np.take_along_axis(idx, order, axis=1))
    return np.vstack(out) if out else np.zeros((0, k), dtype=int)


def _profiles(profiles: Mapping[str, Mapping[str, float]], lessons: Sequence[Lesson], names: Sequence[str],
              sign: float = 1.0) -> dict[str, dict[str, float]]:
    """The profiles with each lesson's ±1 per marked expert and skill added (`sign` -1: taken out)."""
    out = {n: dict(profiles.get(n, {})) for n in names}
    for x in lessons:
        for expert, right in x.marks.items():
            for skill in x.skills:
                out[expert][skill] = out[expert].get(skill, 0.0) + sign * (1.0 if right else -1.0)
    return out


def observed_counts(evidence: RoutingEvidence) -> dict[str, int]:
    """How many marks of each expert are known (how certain its estimate is)."""
    seen = evidence.observed or {}
    return {n: int(np.sum(seen[n])) if n in seen else len(c) for n, c in (evidence.correct or {}).items()}


# ------------------------------------------------------------------ scoring answers


def scored(answers: Mapping[str, str], weights: Mapping[str, float], reliability: AnswerReliability | None,
           gold: str | None = None, question: str = "", explored: Collection[str] = ()
           ) -> tuple[dict[str, bool], dict[str, str | None], str | None]:
    """Each answer's mark against the gold answer, else against the weighted consensus of the
    answers; with each one's option letter (None: not a choice), and the reference used. Without
    gold, fewer than two voters (or, lettered, fewer than two answers with a letter) or a tie
    at the top is no consensus: no reference, no marks (a lone answer would agree with itself,
    and a tie would be settled by letter order). A gold
    answer that names nothing to compare with (`gold_choice`: none of `question`'s options,
    against lettered answers; nothing but punctuation) is no reference either.

    `explored` experts are marked against the consensus but cast no vote in it: their weight is
    an unseen expert's prior, heavier than a profiled 7B's, so on a split vote an explorer's own
    letter was the consensus and it was marked right on its own say (80% of its marks right on
    the replay stream where it was 32-52% right; bench/learning.py).

    Free text is compared by the number its final answer commits to where it has one, as
    profiling grades ("17 * 23 = 391." and "The answer is 391." both say 391), else by its
    normalised text; a consensus takes two non-empty answers (an empty reply casts no vote).
    Letters are read among `question`'s options (`_choices`)."""
    letters = _choices(answers, question)
    lettered = any(v is not None for v in letters.values())
    voting = {e: v for e, v in letters.items() if e not in explored}
    # a reply without a letter casts no vote: one letter among several would agree with itself alone
    if not gold and (len(voting) < 2 or (lettered and sum(v is not None for v in voting.values()) < 2)):
        return {}, letters if lettered else dict.fromkeys(answers), None
    if lettered:
        ref = gold_choice(gold, question) if gold \
            else _consensus(weighted_vote(list(voting.items()), weights, reliability).support)
        return _marked(letters, ref), letters, ref
    finals = {e: _key(t) for e, t in answers.items()}
    # an empty reply is no vote: counted as the second voter, it let a lone answer agree with itself
    votes = {e: f for e, f in finals.items() if e not in explored and f != ""}
    said = _reference(gold) if gold else _consensus(_support(votes, weights)) if len(votes) >= 2 else None
    return _marked(finals, said), dict.fromkeys(answers), None if said is None else str(said)


def _choices(answers: Mapping[str, str], question: str) -> dict[str, str | None]:
    """Each answer's option letter, among the question's own options; a question with fewer than
    two is free text, with none ("Answer: I think 391" was read as a pick of "I", and became the
    reference). Without a question (bench/learning.py's "Answer: <letter>" replies), any letter."""
    n = option_count(question) if question else len(LETTERS)
    return {e: extract_choice(t, n) if n >= 2 else None for e, t in answers.items()}


def gold_choice(gold: str, question: str = "") -> str | None:
    """The option letter a gold answer names: an option's text in `question` ("Carbon dioxide"
    is B's), else read as the answers are ("B. Paris" and "The answer is (B)." are B); None when
    it names none. Its text first: a letter inside it ("Vitamin C") is not a pick; a bare letter
    in either case last (" b ": extraction reads a lower-case letter as a word). A question with
    lettered options bounds the letters: "E" of an A-D question names none of them (taken, it
    marked every expert wrong)."""
    valid = LETTERS[:n] if (n := option_count(question)) >= 2 else LETTERS
    bare = gold.strip().upper()
    return _option_texts(question).get(_normal(gold)) or extract_choice(gold, len(valid)) \
        or (bare if len(bare) == 1 and bare in valid else None)


def _option_texts(question: str) -> dict[str, str]:
    """Each option's text (normalised as `_normal`) → its letter, for the options `option_count`
    finds (the last lettered run of the question; a later line of a letter wins, as the run is last)."""
    valid, found = LETTERS[:option_count(question)], {}
    for line in question.splitlines():
        if (m := _OPTION_TEXT.match(line)) and m[1].upper() in valid:
            found[m[1].upper()] = _normal(m[2])
    return {text: letter for letter, text in found.items() if text}


def _reference(gold: str) -> str | float | None:
    """A free-text gold answer as answers are compared, None where it holds no letter or digit
    ("?", "—", "**"): taken, it marked every answering expert wrong."""
    return _key(gold) if any(ch.isalnum() for ch in gold) else None


def _key(text: str) -> str | float:
    """What a free-text answer is compared by: the number its final answer commits to, read as
    `skills.grading.grade` reads it (as whole strings, "391" and "The answer is 391." differed),
    else that answer normalised. inf and nan (an overflow, a 0/0) compare as text."""
    final = final_answer(text)
    number = extract_answer_number(final)
    return number if number is not None and math.isfinite(number) else _normal(final)


def _marked(answers: Mapping[str, str | float | None], ref: str | float | None) -> dict[str, bool]:
    """Each answer's mark; none without a reference (nothing to be right or wrong against).
    Numbers are equal as `grade` has them: within a relative 1e-6."""
    if isinstance(ref, float):
        return {e: isinstance(a, float) and math.isclose(a, ref, rel_tol=1e-6, abs_tol=1e-9)
                for e, a in answers.items()}
    return {e: a == ref for e, a in answers.items()} if ref else {}


def _normal(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def _support(finals: Mapping[str, Reading], weights: Mapping[str, float]) -> dict[Reading, float]:
    support: dict[Reading, float] = {}
    for expert, f in finals.items():
        support[f] = support.get(f, 0.0) + max(weights.get(expert, 0.0), 1e-6)
    return support


def _consensus(support: Mapping[Reading, float]) -> Reading | None:
    """The answer with the most support; None when two share the top (no consensus)."""
    ranked = sorted(support.values(), reverse=True)
    if not ranked or (len(ranked) > 1 and math.isclose(ranked[0], ranked[1])):
        return None
    return max(support, key=support.__getitem__)


# ------------------------------------------------------------------ when to compete


class CompetitionPolicy:
    """Fires on a share of routed queries (drawn by each query's seed and text, so a replay is the
    same; by the seed alone, a client that pins one had every query compete or none), at
    most `per_minute` in any minute (competitions and explorations together; the slots of
    queries that are not admitted are given back, `give_back`).

    A competition scored by consensus alone (no gold known) teaches only with `consensus_teaches`:
    consensus marks the expert that is right against the crowd wrong exactly where it is worth
    most, and on the replay corpus (bench/learning.py, seeds 0-4) such lessons cost the all-22
    pool 1.8 points at a 5% rate and gained nothing on the open pool. Its answers are still
    stored with their scores, and feedback with the answer turns them into a lesson on every
    expert that competed. Explorations always teach: a new expert has no other evidence, and
    their consensus is the recruited top k's, not the whole pool's (marking the explorer alone
    was measured on bench/learning.py: +1.36 against +1.52 points on the open pool, 71.9% against 71.8% on all 22)."""

    def __init__(self, rate: float = 0.05, per_minute: int = 30, clock: Callable[[], float] = time.monotonic,
                 consensus_teaches: bool = False):
        self.rate, self.per_minute, self.clock = rate, per_minute, clock
        self.consensus_teaches = consensus_teaches
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()

    def fires(self, seed: int, text: str, salt: str = "compete", rate: float | None = None,
              dry_run: bool = False) -> bool:
        """Whether this query (by its seed and text) competes; a dry run (a route shown, not run)
        asks the draw alone and spends nothing of the cap."""
        if random.Random(f"{salt}:{seed}:{text}").random() >= (self.rate if rate is None else rate):
            return False
        return dry_run or self._take()

    def teaches(self, lesson: Lesson) -> bool:
        return lesson.reference == "gold" or lesson.source != "competition" or self.consensus_teaches

    def give_back(self, slots: int) -> None:
        """Return `slots` of the cap that queries never run took (a request refused, a store that
        failed): the cap counts work done. The oldest go, so those kept leave the window no sooner
        than the ones truly taken: the newest going kept an older slot counted in its place, which
        left early and let a third competition into a minute capped at two."""
        with self._lock:
            for _ in range(min(slots, len(self._recent))):
                self._recent.popleft()

    def _take(self) -> bool:
        now = self.clock()
        with self._lock:
            while self._recent and self._recent[0] <= now - 60:
                self._recent.popleft()
            if len(self._recent) >= self.per_minute:
                return False
            self._recent.append(now)
            return True
