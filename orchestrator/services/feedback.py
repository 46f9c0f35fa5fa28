"""Feedback on an answered query: it moves the evidence of the experts that answered it.

`{"answer": ...}` gives the gold answer: each answering expert is marked right or wrong against
it (against lettered answers, an option's text stands for its letter; an answer that names no
option, or holds nothing but punctuation, is refused with a 422). `{"correct": true}` says the
service's answer was right: each expert is marked against it. `{"correct": false}` says it was
wrong: the experts that gave it are marked wrong, and the others stay unmarked (a wrong answer
does not say which other answer was right). The marks become a lesson of the router
(`routing.learning`), one per query: feedback given again replaces the first (one that marks
no one too: the first's verdict is withdrawn), so the same feedback twice counts once, and
feedback replaces the lesson an explored or competed query taught against the consensus of its
answers. The answer of an expert whose persona changed since
the query was asked is listed in the reply and taught nothing: it judges a persona the expert
no longer has (lessons stored before the change are left out by `pool.STALE_LESSONS_KEY`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestrator.domain import Decision
from orchestrator.probe import NULL_PROBE, Probe
from orchestrator.routing.learning import Lesson, scored
from orchestrator.services.errors import Conflict, NotFound, Unprocessable
from orchestrator.services.pool import PoolState
from orchestrator.services.queries import readable
from orchestrator.store.db import Database
from orchestrator.store.models import Query
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.lessons import LessonRepository
from orchestrator.store.repositories.queries import QueryRepository, decision_of
from skills.embedder import Embedder
from skills.question_text import question_part


@dataclass(frozen=True)
class Verdict:
    query_id: int
    marks: dict[str, bool]  # each answering expert marked: right or wrong
    replaced: bool  # this query had feedback already; it now counts as this one


class FeedbackService:
    def __init__(self, db: Database, pool: PoolState, embedder: Embedder, probe: Probe = NULL_PROBE):
        self.db, self.pool, self.embedder, self.probe = db, pool, embedder, probe

    def give(self, query_id: int, correct: bool | None = None, answer: str | None = None,
             reader: int | None = None) -> Verdict:
        """Mark the query's experts (see the module doc); 404 for an unknown query (or, for a
        client key `reader`, one another key asked), 409 for one that has no answer to judge yet."""
        row, had, changed = self._read(query_id)  # `had` read first decides only whether to replace with nothing
        if row is None or not readable(row, reader):
            raise NotFound(f"no query with id {query_id}", "query_id")
        decision = decision_of(row)
        if row.status != "done" or decision is None or row.answer is None:
            raise Conflict(f"query {query_id} has no answer to judge (it is {row.status})", "query_id")
        texts = {g.expert: g.text for g in row.generations if g.role in ("expert", "competitor")}
        marks, letters = self._marks(texts, decision, row.answer, correct, answer, row.text)
        # an answer of a persona changed since judges that old persona: listed, not taught
        taught = {e: m for e, m in marks.items() if e not in changed or changed[e] < row.created_at}
        if taught or had:  # feedback that marks no one still replaces the first: its verdict is withdrawn
            had = self._teach(row, decision, taught, letters)
        return Verdict(query_id, marks, had)

    def _read(self, query_id: int) -> tuple[Query | None, bool, dict[str, datetime]]:
        """The query, whether it had feedback already, and when each expert's persona changed."""
        with self.db.session() as s:
            row = QueryRepository(s).get(query_id)
            had = bool(row and any(r.source == "feedback" for r in LessonRepository(s).for_query(query_id)))
            experts = ExpertRepository(s).list(profiles=False)
            changed = {e.name: e.persona_changed_at for e in experts if e.persona_changed_at}
        return row, had, changed

    def _teach(self, row: Query, decision: Decision, marks: dict[str, bool], letters: dict[str, str | None]) -> bool:
        """Store the lesson; whether it replaced earlier feedback, as the store saw it (two
        requests at once each read none before storing, and each counted and said so)."""
        embedding = self.embedder.encode([question_part(row.text)])[0]
        lesson = Lesson(embedding, tuple(m.skill for m in decision.skills), marks,
                        {e: letters.get(e) for e in marks}, "feedback")
        (stored,) = self.pool.learn([(row.id, lesson)])
        replaced = any(old.source == "feedback" for _, old in stored.replaced)
        if not replaced:  # feedback given again replaces its lesson: the store keeps one, so count one
            self.probe.learned(["feedback"])
        return replaced

    def _marks(self, texts: dict[str, str], decision: Decision, final: str, correct: bool | None,
               answer: str | None, question: str) -> tuple[dict[str, bool], dict[str, str | None]]:
        weights = {s.name: s.weight for s in decision.experts}
        reliability = self.pool.snapshot.router.reliability
        if answer is None and not final.strip():  # nothing to judge by: read as no gold, it graded the consensus
            raise Unprocessable("correct: the query's answer is empty, so there is nothing it judges; send the right "
                                "answer as {\"answer\": ...}", "correct")
        if answer is not None or correct:
            marks, letters, ref = scored(texts, weights, reliability, answer if answer is not None else final, question)
            if answer is not None and ref is None and texts:
                raise _unreadable(answer, letters)
            return marks, letters
        agrees, letters, _ = scored(texts, weights, reliability, final, question)  # the answer was wrong
        return {e: False for e, same in agrees.items() if same}, letters


def _unreadable(answer: str, letters: dict[str, str | None]) -> Unprocessable:
    """A gold answer there is nothing to compare with: the client's to fix, so refused and named
    (as a 200 with no marks it would look taken; taken as it was, it marked every expert wrong)."""
    if any(letters.values()):
        return Unprocessable(f"answer: {answer!r} is neither an option letter nor the text of one of the "
                             "query's options, and its experts answered with option letters", "answer")
    return Unprocessable(f"answer: {answer!r} holds no answer to compare the experts' with", "answer")
