"""The router's memory of validation questions is embedded once, at profiling, and read back at
every start (a restart, a new Serve replica) instead of being embedded again; the live snapshot
follows the store in the order changes were made."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

import orchestrator.services.pool as pool_module
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.routing.evidence import RoutingEvidence
from orchestrator.routing.learning import Lesson
from orchestrator.services.pool import load_evidence
from orchestrator.store.models import LessonRow, Query, ValidationQuestion
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.lessons import LessonRepository
from orchestrator.store.repositories.validation import ValidationRepository
from skills.embedder import Embedder, get_embedder
from tests.orchestrator.conftest import CountingEmbedder, mock_or_real


def stored(c: SkillRoute) -> list[ValidationQuestion]:
    with c.db.session() as s:
        return list(ValidationRepository(s).questions(c.pool.dataset))


def restarted(c: SkillRoute, embedder: Embedder) -> SkillRoute:
    again = SkillRoute(c.settings, c.pool_config, factory=mock_or_real, embedder=embedder)
    again.pool.refresh()
    return again


def test_profiling_stores_each_question_embedding_and_a_restart_reads_them(container: SkillRoute,
                                                                          embedder: Embedder) -> None:
    rows = stored(container)
    assert rows and all(r.embedding for r in rows)
    first = rows[0]
    assert np.allclose(np.frombuffer(first.embedding or b"", dtype=np.float32),
                       embedder.encode([first.payload["question"]])[0], atol=1e-5)
    counting = CountingEmbedder(embedder)
    again = restarted(container, counting)
    assert not {r.payload["question"] for r in rows} & set(counting.texts)  # none embedded again
    assert len(again.pool.snapshot.experts) == len(container.pool.snapshot.experts)
    again.close()


def test_a_set_stored_without_embeddings_is_embedded_once_then_read(container: SkillRoute,
                                                                    embedder: Embedder) -> None:
    with container.db.session() as s:
        s.execute(update(ValidationQuestion).values(embedding=None))  # a set stored before 0008
    counting = CountingEmbedder(embedder)
    restarted(container, counting).close()
    assert sum(counting.texts.values()) >= len(stored(container))
    assert all(r.embedding for r in stored(container))
    counting.texts.clear()
    restarted(container, counting).close()
    assert not {r.payload["question"] for r in stored(container)} & set(counting.texts)


def test_a_change_of_embedding_kind_embeds_the_memory_and_the_lessons_again(container: SkillRoute) -> None:
    """Stored vectors of another kind (another width) are embedded again by the one in use: the
    validation set, and each lesson whose query is kept; a lesson without one is forgotten."""
    with container.db.session() as s:
        query = Query(text="What is 6 times 7?", k=3)
        s.add(query)
        s.flush()
        marks = {next(iter(container.pool.snapshot.experts)): True}
        for qid in (query.id, None):
            LessonRepository(s).store(Lesson(np.ones(container.embedder.dim, dtype=np.float32), ("arithmetic",),
                                           marks), qid)
    transformer = get_embedder("transformer")
    restarted(container, transformer).close()
    assert {len(r.embedding or b"") for r in stored(container)} == {4 * transformer.dim}
    with container.db.session() as s:
        rows = s.query(LessonRow).all()
        assert [r.query_id for r in rows] == [query.id]
        assert np.allclose(np.frombuffer(rows[0].embedding, dtype="<f4"),
                           transformer.encode(["What is 6 times 7?"])[0], atol=1e-5)


def test_the_evidence_knows_how_many_options_its_questions_offered(container: SkillRoute, embedder: Embedder) -> None:
    """Free text is weighed against it (routing/knn_router.py): the packaged MMLU's 4."""
    counts = [len(r.payload.get("options") or ()) for r in stored(container)]
    evidence = load_evidence(container.db, container.pool.dataset, embedder).evidence
    assert evidence.options == 4 == max(counts)


def test_the_pool_reads_only_the_answers_on_its_own_validation_set(container: SkillRoute, embedder: Embedder) -> None:
    """Experts still holding another set's answers (the pool file's set changed, their new
    profiles not in yet) are loaded with none observed, not a KeyError on the other set's ids."""
    loaded = load_evidence(container.db, "another-set", embedder)
    assert set(loaded.experts) == {"alpha", "beta", "gamma"}
    assert loaded.evidence.observed is not None and not any(o.any() for o in loaded.evidence.observed.values())


@contextmanager
def refresh_held_after_reading(c: SkillRoute, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A refresh on its own thread that has read the store and waits, while the block runs, to
    be shown (its re-reads, if any, are not held)."""
    real, read, finish = pool_module.load_evidence, threading.Event(), threading.Event()

    def held_after_reading(*args: Any) -> Any:
        out = real(*args)
        if threading.current_thread().name == "held-refresh" and not finish.is_set():
            read.set()
            assert finish.wait(60), "the test never let the held refresh finish"
        return out

    monkeypatch.setattr(pool_module, "load_evidence", held_after_reading)
    held = threading.Thread(target=c.pool.refresh, name="held-refresh")
    held.start()
    try:
        assert read.wait(60)
        yield
    finally:
        finish.set()
        held.join(60)
        monkeypatch.setattr(pool_module, "load_evidence", real)


def test_a_refresh_that_read_before_a_removal_does_not_bring_the_expert_back(
        container: SkillRoute, monkeypatch: pytest.MonkeyPatch) -> None:
    """A profiling run's refresh read the store, an expert was removed (and the pool refreshed),
    then the first refresh finished: the snapshot must stay the one read after the removal."""
    with refresh_held_after_reading(container, monkeypatch):
        with container.db.session() as s:
            ExpertRepository(s).set_lifecycle(container.experts.find("gamma").id, "removed")
        assert "gamma" not in container.pool.refresh().experts
    assert "gamma" not in container.pool.snapshot.experts
    assert container.pool.snapshot.evidence is not None and "gamma" not in container.pool.snapshot.evidence.profiles


def test_a_refresh_that_read_before_a_lesson_was_learned_keeps_it_live(
        container: SkillRoute, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh (an expert changed, a profiling run ended) read the store, feedback was stored
    and put into the live snapshot, then the refresh was shown: the lesson was gone from the live
    router until the next rebuild, though stored."""
    [row] = container.queries.ask([Ask(text="What is 2 + 3?", k=2, mode="topk", seed=1)])
    before = container.pool.snapshot.evidence.learned_rows  # type: ignore[union-attr]
    with refresh_held_after_reading(container, monkeypatch):
        assert container.feedback.give(row.id, correct=True).marks
    live = container.pool.snapshot.evidence
    assert live is not None and live.learned_rows == before + 1
    same_evidence(live, load_evidence(container.db, container.pool.dataset, embedder).evidence)


def same_evidence(live: RoutingEvidence, rebuilt: RoutingEvidence) -> None:
    assert (live.profiles, live.competence, live.labels, live.choices, live.learned_rows) == \
           (rebuilt.profiles, rebuilt.competence, rebuilt.labels, rebuilt.choices, rebuilt.learned_rows)
    assert live.question_embeddings is not None and rebuilt.question_embeddings is not None
    assert np.array_equal(live.question_embeddings, rebuilt.question_embeddings)
    for field in ("correct", "observed"):
        mine, theirs = getattr(live, field), getattr(rebuilt, field)
        assert mine.keys() == theirs.keys() and all(np.array_equal(mine[n], theirs[n]) for n in mine), field


def test_feedback_given_again_is_taken_in_at_once_as_a_rebuild_counts_it(
        container: SkillRoute, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feedback again on a query (a retried request) replaces its lesson: the live pool takes the
    old one's row and marks out and adds the new one, without reading the whole pool from the
    store again (every expert, answer and lesson: seconds at 50,000 lessons), and routes on what
    a rebuild from the store would."""
    # lettered and seeded: each verdict marks someone (on free text the mock's "Answer: A (hash)"
    # replies are compared by the numbers in their hashes, and a verdict that marks no one is no row)
    first, second = container.queries.ask([Ask(text="What is 2 + 3?\nA) 4\nB) 5\nC) 6", k=2, seed=1),
                                           Ask(text="Who wrote Hamlet?\nA) Marlowe\nB) Shakespeare", k=2, seed=2)])
    container.feedback.give(first.id, correct=True)
    container.feedback.give(second.id, correct=False)  # the first's row is not the newest
    real, rebuilds = pool_module.load_evidence, []

    def counted(*args: Any) -> Any:
        rebuilds.append(args)
        return real(*args)

    monkeypatch.setattr(pool_module, "load_evidence", counted)
    assert container.feedback.give(first.id, correct=False).replaced
    assert rebuilds == []
    live = container.pool.snapshot.evidence
    assert live is not None and live.learned_rows == 2
    same_evidence(live, real(container.db, container.pool.dataset, embedder).evidence)


def test_feedback_naming_a_removed_expert_leaves_it_out_as_a_rebuild_does(
        container: SkillRoute, embedder: Embedder) -> None:
    """Feedback on a query one of whose experts was removed since: its mark was put back into
    the live evidence (the expert with it), which a restart then dropped (`load_evidence`)."""
    query = container.queries.ask([Ask(text="What is 2 + 3?", k=2, mode="topk", seed=1)])[0]
    gone = sorted({g.expert for g in container.queries.get(query.id).generations if g.role == "expert"})[0]
    container.experts.remove(container.experts.find(gone).id)
    assert gone in container.feedback.give(query.id, correct=True).marks  # the verdict names every answer
    live = container.pool.snapshot.evidence
    assert live is not None and gone not in live.profiles and gone not in container.pool.evidence_counts()
    same_evidence(live, load_evidence(container.db, container.pool.dataset, embedder).evidence)


def test_two_feedbacks_on_one_query_at_once_count_it_once_live(
        container: SkillRoute, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored its lesson; B stored its own, replacing A's, and (A's row not in the live memory
    yet) rebuilt the pool from the store; A then added its deleted lesson on top of that rebuild:
    the live router counted the query twice until the next rebuild."""
    query = container.queries.ask([Ask(text="What is 2 + 3?", k=2, mode="topk", seed=1)])[0]
    pool, stored_a, go_on = container.pool, threading.Event(), threading.Event()
    real_store = pool._store

    def held_after_storing(lessons: Any) -> Any:
        out = real_store(lessons)
        if threading.current_thread().name == "A":  # A stored, not applied yet
            stored_a.set()
            assert go_on.wait(60), "the test never let A go on"
        return out

    monkeypatch.setattr(pool, "_store", held_after_storing)
    a = threading.Thread(target=container.feedback.give, args=(query.id, True), name="A")
    a.start()
    try:
        assert stored_a.wait(60)
        assert container.feedback.give(query.id, correct=True).replaced  # B, run to its end
    finally:
        go_on.set()
        a.join(60)
    live = pool.snapshot.evidence
    assert live is not None
    same_evidence(live, load_evidence(container.db, pool.dataset, embedder).evidence)


def same_routing(live: RoutingEvidence, rebuilt: RoutingEvidence) -> None:
    """`same_evidence`, but a profile entry of 0 is as good as none (profiles are read with
    `.get(skill, 0.0)` and summed): a lesson taken out leaves one where it had added it."""
    nonzero = [{n: {k: v for k, v in p.items() if v} for n, p in e.profiles.items()} for e in (live, rebuilt)]
    assert nonzero[0] == nonzero[1]
    same_evidence(replace(live, profiles=rebuilt.profiles), rebuilt)


def test_feedback_marking_fewer_experts_than_the_one_it_replaces_is_taken_in_without_a_rebuild(
        container: SkillRoute, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """`correct: false` after `true` marks only the experts that gave the answer: the old
    lesson's other marks could not be taken out exactly, so every such request rebuilt the whole
    pool and refitted the router (28 s at scale), which any client key could force at will."""
    query = container.queries.ask([Ask(text="What is 2 + 3?", k=3, mode="topk", seed=1)])[0]
    first = container.feedback.give(query.id, correct=True).marks
    real, rebuilds = pool_module.load_evidence, []
    monkeypatch.setattr(pool_module, "load_evidence", lambda *a: rebuilds.append(a) or real(*a))
    second = container.feedback.give(query.id, correct=False).marks
    assert set(second) < set(first)  # fewer marks than the lesson it replaces
    assert rebuilds == []
    live = container.pool.snapshot.evidence
    assert live is not None
    same_routing(live, real(container.db, container.pool.dataset, embedder).evidence)
