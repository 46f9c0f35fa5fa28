"""The live pool: the current `PoolSnapshot`, rebuilt from the store when profiles change."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy.exc import IntegrityError

from experts.types import ExpertSpec
from orchestrator.aggregation.option_prior import fitted
from orchestrator.pipeline.snapshot import PoolSnapshot
from orchestrator.routing.evidence import RoutingEvidence, typical_options
from orchestrator.routing.knn_router import KnnRouter
from orchestrator.routing.learning import (
    CERTAIN_AFTER,
    MAX_LEARNED_ROWS,
    Lesson,
    learned,
    observed_counts,
    unmarked,
)
from orchestrator.routing.router import build_router
from orchestrator.services.deployment import Deployment
from orchestrator.services.refits import Refits
from orchestrator.store.db import Database
from orchestrator.store.models import ValidationQuestion
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.lessons import LessonRepository, Stored
from orchestrator.store.repositories.state import StateRepository
from orchestrator.store.repositories.validation import AnswerRow, ValidationRepository
from skills.embedder import Embedder
from skills.grading import extract_choice
from skills.question_text import question_part
from skills.vocabulary import SkillVocabulary

AGGREGATOR_KEY = "aggregator"
# a refresh that missed a lesson the live snapshot holds reads again, at most this often (a
# lesson deleted since, with none newer, would otherwise keep it reading)
REREADS = 2
PLACEMENT_KEY = "placement"  # expert → worker, the plan kept last (`placement`)
STALE_LESSONS_KEY = "stale_lessons"  # expert → the last lesson before its persona changed


class Loaded(NamedTuple):
    """What `load_evidence` read (see there); `lesson_ids` are the lessons behind the evidence's
    learned rows, oldest first (a replaced lesson's row is found by its id); `read_upto` the
    highest lesson id read (0: none)."""

    experts: dict[str, ExpertSpec]
    evidence: RoutingEvidence
    skills: list[str]
    profiling: set[str]
    lesson_ids: list[int]
    read_upto: int = 0


def load_evidence(db: Database, dataset: str, embedder: Embedder) -> Loaded:
    """The experts routing may use (ready ones, and those still profiling, to explore), their
    profiles and per-question records with what traffic taught since, the profiled skill names,
    and which experts are not profiled yet."""
    with db.session() as s:
        rows = [r for r in ExpertRepository(s).list() if r.status in ("ready", "profiling")]
        experts = {r.name: ExpertSpec.model_validate(r.spec) for r in rows}
        profiles = {r.name: {sk.skill: sk.score for sk in r.skills} for r in rows}
        questions = ValidationRepository(s).questions(dataset)
        answers = ValidationRepository(s).answers([r.id for r in rows], dataset)  # not an earlier set's
        texts = [q.payload["question"] for q in questions]
        stored = [(q.id, q.embedding) for q in questions]
        labels = [str(q.payload.get("subject", "")) for q in questions]
        correct, choices, observed = _answer_records(questions, answers, {r.id: r.name for r in rows})
        skills = sorted({sk for q in questions for sk in q.skills})
        _embed_lessons_again(LessonRepository(s), embedder)
        lessons = LessonRepository(s).with_ids(StateRepository(s).get(STALE_LESSONS_KEY), embedded=MAX_LEARNED_ROWS)
        profiling = {r.name for r in rows if r.status != "ready"}
    embeddings = question_embeddings(db, embedder, texts, stored) if texts else None
    options = typical_options(len(q.payload.get("options") or ()) for q in questions)
    prior = fitted(tuple(_answer_key(q.payload) for q in questions if q.payload.get("options")))
    base = RoutingEvidence(profiles, embeddings, correct, labels, choices, observed=observed, options=options,
                           option_prior=prior)
    evidence = learned(base, [_known(x, experts) for _, x in lessons])
    ids = [i for i, _ in lessons]
    return Loaded(experts, evidence, skills, profiling, _newest(ids, evidence.learned_rows), max(ids, default=0))


def _answer_key(payload: dict[str, Any]) -> tuple[str, tuple[str, ...], str]:
    """A lettered validation question as the option prior is fitted on it (question, options, gold)."""
    return str(payload["question"]), tuple(map(str, payload["options"])), str(payload.get("answer", ""))


def question_embeddings(db: Database, embedder: Embedder, texts: Sequence[str],
                        stored: Sequence[tuple[int, bytes | None]]) -> np.ndarray:
    """The validation questions' embeddings as profiling stored them; any without one (a set
    stored before they were kept) is embedded now and stored, so the next start reads it. The
    embedding kind can change (settings.embedding.kind; each has its own width): a stored row of
    another width is embedded again."""
    rows = [np.frombuffer(blob, dtype=np.float32) if blob else None for _, blob in stored]
    missing = [i for i, r in enumerate(rows) if r is None or len(r) != embedder.dim]
    if missing:
        fresh = embedder.encode([texts[i] for i in missing])
        with db.session() as s:
            ValidationRepository(s).set_embeddings([(stored[i][0], v.tobytes()) for i, v in zip(missing, fresh,
                                                                                                  strict=True)])
        for i, v in zip(missing, fresh, strict=True):
            rows[i] = v
    return np.stack([np.asarray(r, dtype=np.float32) for r in rows])


def _embed_lessons_again(lessons: LessonRepository, embedder: Embedder) -> None:
    """Lessons embedded by another embedding kind get their query embedded by this one (a
    lesson whose query is gone cannot be, and is forgotten)."""
    stale = lessons.of_other_width(embedder.dim)
    texts = [question_part(text) for _, text in stale if text is not None]
    vectors = iter(embedder.encode(texts)) if texts else iter(())
    for row, text in stale:
        lessons.set_embedding(row, next(vectors) if text is not None else None)


def _known(lesson: Lesson, experts: Mapping[str, ExpertSpec]) -> Lesson:
    """The lesson's marks of experts still in the pool (one removed since teaches nothing)."""
    marks = {e: m for e, m in lesson.marks.items() if e in experts}
    return replace(lesson, marks=marks, choices={e: c for e, c in lesson.choices.items() if e in experts})


def _answer_records(
    questions: Sequence[ValidationQuestion], answers: Sequence[AnswerRow], names: dict[int, str]
) -> tuple[dict[str, np.ndarray], dict[str, list[str | None]], dict[str, np.ndarray]]:
    """Per expert, per question: was it right, which option letter did it pick (if any), and is
    its answer on record at all (not yet, for an expert still being profiled)."""
    index = {q.id: i for i, q in enumerate(questions)}
    correct = {n: np.zeros(len(questions), dtype=bool) for n in names.values()}
    observed = {n: np.zeros(len(questions), dtype=bool) for n in names.values()}
    choices: dict[str, list[str | None]] = {n: [None] * len(questions) for n in names.values()}
    for a in answers:
        i, name = index[a.question_id], names[a.expert_id]
        correct[name][i], observed[name][i] = a.correct, True
        options = questions[i].payload.get("options") or ()
        if questions[i].payload.get("kind", "choice") == "choice" and options:
            choices[name][i] = extract_choice(a.text, len(options))
    return correct, choices, observed


class PoolState:
    """Holds the current snapshot; `refresh` rebuilds it from the store, placement included, and
    `learn` adds what traffic taught to it at once (and to the store, so a restart keeps it)."""

    def __init__(self, db: Database, dataset: str, embedder: Embedder, deployment: Deployment,
                 router_name: str = "symbolic", llm_aggregator: bool = True, refit_every: int = 200):
        self.db, self.dataset, self.embedder, self.router_name = db, dataset, embedder, router_name
        self.deployment, self.refit_every = deployment, refit_every
        self.llm_aggregator = llm_aggregator  # False: answers are voted on, no aggregator expert
        self._lock = threading.Lock()
        self._snapshot: PoolSnapshot | None = None
        self._since_fit = 0  # lessons learned since the router's parameters were last fitted
        self._begun = 0  # refreshes begun: each takes the next number before it reads the store
        self._shown = 0  # the number of the refresh the snapshot was built by
        self._lesson_ids: list[int] = []  # the lessons behind the snapshot's learned rows, oldest first
        # the highest lesson id the shown rebuild read: a lesson at or below it is in the snapshot
        # as the store had it then (read, or deleted by one that replaced it), so `learn` skips it
        self._read_upto = 0
        self.refits = Refits(self._refit)  # behind the lesson that made one due: see there
        self.moved: Callable[[], None] = lambda: None  # told when a shown snapshot places experts anew

    @property
    def snapshot(self) -> PoolSnapshot:
        if self._snapshot is None:
            self.refresh()
        assert self._snapshot is not None
        return self._snapshot

    def refresh(self) -> PoolSnapshot:
        """Rebuild the snapshot from the store. Refreshes run side by side (none waits on
        another's read), but one that began reading before a refresh already shown is dropped:
        it may have read the store before a change that one saw (an expert removed), and
        finishing last must not put that change back. One shown in place of a snapshot that holds
        a lesson stored after its read (`learn` put it in meanwhile) would drop that lesson until
        the next rebuild: it reads again."""
        for _ in range(REREADS):
            shown, missed = self._rebuild()
            if not missed:  # a read after the lesson was stored has it
                return shown
        return self._rebuild()[0]

    def _rebuild(self) -> tuple[PoolSnapshot, bool]:
        """One read of the store, shown unless a later-begun one was shown first; and whether it
        left out a lesson the snapshot it replaced held (its learned rows' ids, `_lesson_ids`)."""
        with self._lock:
            self._begun += 1
            number = self._begun
        snap, ids, upto = self._build()
        with self._lock:
            missed = number > self._shown and max(self._lesson_ids, default=0) > upto
            before = self._snapshot
            if number > self._shown:
                self._snapshot, self._shown, self._since_fit, self._lesson_ids = snap, number, 0, ids
                self._read_upto = upto
            shown = self._snapshot
        assert shown is not None
        if before is not None and shown is snap and before.placement != snap.placement:
            self.moved()  # outside the lock: queries waiting for a worker may take another now
        return shown, missed

    def _build(self) -> tuple[PoolSnapshot, list[int], int]:
        experts, evidence, skills, profiling, ids, upto = load_evidence(self.db, self.dataset, self.embedder)
        with self.db.session() as s:
            agg = (StateRepository(s).get(AGGREGATOR_KEY) or {}).get("name")
        uncertain = _uncertain(evidence, profiling)
        if not self.llm_aggregator:
            agg = None
        elif agg not in experts:  # not benchmarked yet: fall back to the most competent profiled expert
            agg = max((n for n in evidence.competence if n not in uncertain), key=evidence.competence.__getitem__,
                      default=None)
        return PoolSnapshot(experts, build_router(evidence, self.router_name), SkillVocabulary(skills, self.embedder),
                            agg, dict(evidence.competence), self.placement(), dict(self.deployment.workers),
                            evidence, uncertain), ids, upto

    def learn(self, lessons: Sequence[tuple[int | None, Lesson]]) -> list[Stored]:
        """Keep the lessons (query id, lesson) and route by them from now on; how the store took
        each (its id, None when not kept: a competition's or exploration's whose query has
        feedback; the earlier lessons of its query it replaced; the lesson as kept). A lesson that
        replaces earlier ones of its query (feedback given again) takes their rows and marks out
        of the evidence first, so the query counts once, as a rebuild from the store counts it;
        where that cannot be done exactly here, the pool is rebuilt from the store."""
        stored, stale = self._store(lessons)
        built, due = self.snapshot, False  # outside the lock: building it takes the lock
        with self._lock:
            snap = self._snapshot or built
            # each as the store kept it (`Stored.lesson`: no marks of a persona changed since its query)
            fresh = [(s.id, s) for s in stored
                     if s.id is not None and s.id > self._read_upto]  # see `_read_upto`; None: refused
            # as `load_evidence` reads them back: marks of an expert removed since teach nothing
            taught = [_known(s.lesson, snap.experts) for _, s in fresh]
            cut = _unlearned(snap, self._lesson_ids, [s for _, s in fresh], stale)
            if cut is not None and fresh:
                due = self._teach(*cut, [i for i, _ in fresh], taught)
        if cut is None:
            self.refresh()
        elif due:
            self.refits.ask()
        return stored

    def _store(self, lessons: Sequence[tuple[int | None, Lesson]]) -> tuple[list[Stored], dict[str, int]]:
        """Store the lessons; with what they replaced, which lessons each expert's marks stop
        counting in (a persona changed since: `load_evidence` leaves those marks out)."""
        with self.db.session() as s:
            stored = [LessonRepository(s).store(lesson, qid) for qid, lesson in lessons]
            stale = StateRepository(s).get(STALE_LESSONS_KEY) if any(x.replaced for x in stored) else None
        return stored, stale or {}

    def _teach(self, snap: PoolSnapshot, ids: list[int], new_ids: list[int], lessons: Sequence[Lesson]) -> bool:
        """Under the lock: the snapshot with the lessons added, and the ids of its learned rows;
        True when the router's parameters are due to be fitted again (`_refit`, behind the caller)."""
        self._snapshot = _taught(snap, lessons, self.router_name)
        assert self._snapshot.evidence is not None
        self._lesson_ids = _newest([*ids, *new_ids], self._snapshot.evidence.learned_rows)
        self._since_fit += len(lessons)
        due = self._since_fit >= self.refit_every
        self._since_fit = 0 if due else self._since_fit  # counted from now: one refit is asked for, not one a lesson
        return due

    def _refit(self) -> None:
        """Fit the k-NN router's parameters again off the lock (28 s at scale: lessons and
        refreshes waited on it), then put them into the snapshot current by then, lessons learned
        meanwhile kept; not when a refresh shown since fitted its own."""
        with self._lock:
            snap, shown = self._snapshot, self._shown
        if snap is None or snap.evidence is None or not isinstance(snap.router, KnnRouter):
            return
        fitted = KnnRouter(snap.evidence)
        with self._lock:
            now = self._snapshot
            if self._shown == shown and now is not None and now.evidence is not None:
                router = fitted if now is snap else KnnRouter(now.evidence, fitted.params)
                self._snapshot = replace(now, router=router)

    def placement(self, extra: ExpertSpec | None = None) -> dict[str, str]:
        """Where every stored expert that has not failed or been removed runs (and `extra`, not
        stored yet: where it would run, a what-if not kept, as it may never be stored); a disabled
        one keeps its place, ready to be enabled again. Planned from the plan kept last, and kept
        where it changed: planned afresh, registering one expert moved others (loaded again, their
        old copies still resident); stored, so every replica and a restart plan from it alike."""
        with self.db.session() as s:
            rows = [r for r in ExpertRepository(s).list(profiles=False) if r.status not in ("failed", "removed")]
            specs = {r.name: ExpertSpec.model_validate(r.spec) for r in rows}
            before = StateRepository(s).get(PLACEMENT_KEY) or {}
        if extra is not None:
            return self.deployment.plan({**specs, extra.name: extra}, before)
        placed = self.deployment.plan(specs, before)
        if placed != before:
            self._keep_placement(placed)
        return placed

    def _keep_placement(self, placed: dict[str, str]) -> None:
        """A base moves only where it no longer fits beside the pinned ones (or its own expert was
        moved, which releases it): loading those evicts its copy on the worker it left."""
        try:
            with self.db.session() as s:
                StateRepository(s).put(PLACEMENT_KEY, placed)
        except IntegrityError:  # another replica kept its first plan at once: the next plan starts from it
            pass

    def worker_for(self, spec: ExpertSpec) -> str:
        return self.placement(spec)[spec.name]

    def close(self) -> None:
        self.refits.close()

    def evidence_counts(self) -> dict[str, int]:
        """Each expert's observed marks, profiling and lessons together."""
        evidence = self.snapshot.evidence
        return observed_counts(evidence) if evidence is not None else {}


def _uncertain(evidence: RoutingEvidence, profiling: set[str]) -> frozenset[str]:
    """Experts not profiled yet with too little evidence to be recruited (they are explored)."""
    counts = observed_counts(evidence)
    return frozenset(n for n in profiling if counts.get(n, 0) < CERTAIN_AFTER)


def _taught(snap: PoolSnapshot, lessons: Sequence[Lesson], router_name: str) -> PoolSnapshot:
    """The snapshot with the lessons in its evidence and a router rebuilt on it (the k-NN
    router keeps its fitted parameters: `PoolState._refit` fits them again)."""
    assert snap.evidence is not None
    evidence = learned(snap.evidence, lessons)
    router = KnnRouter(evidence, snap.router.params) if isinstance(snap.router, KnnRouter) \
        else build_router(evidence, router_name)
    still = frozenset(n for n in snap.uncertain if observed_counts(evidence).get(n, 0) < CERTAIN_AFTER)
    return replace(snap, router=router, evidence=evidence, competence=dict(evidence.competence), uncertain=still)


def _newest(ids: Sequence[int], n: int) -> list[int]:
    return list(ids[len(ids) - n:]) if n > 0 else []


def _unlearned(snap: PoolSnapshot, ids: Sequence[int], stored: Sequence[Stored], stale: Mapping[str, int]
               ) -> tuple[PoolSnapshot, list[int]] | None:
    """The snapshot without the lessons `stored` replaced (their rows, their marks in the
    profiles), and the ids of the rows left; None where the result would not be exactly what a
    rebuild from the store makes (see `_exact`)."""
    old = [(i, x) for s in stored for i, x in s.replaced]
    if not old:
        return snap, list(ids)
    evidence = snap.evidence
    if evidence is None or not all(_exact(i, x, snap.experts, stale) for i, x in old):
        return None
    at = {i: k for k, i in enumerate(ids)}
    full = evidence.learned_rows >= MAX_LEARNED_ROWS  # older ones fell out of the memory: marks only
    if any(i not in at and not (full and i < min(ids)) for i, _ in old):
        return None
    first = (0 if evidence.question_embeddings is None else len(evidence.question_embeddings)) - evidence.learned_rows
    rows = [first + at[i] for i, _ in old if i in at]
    gone = {i for i, _ in old}
    return replace(snap, evidence=_without(evidence, rows, [x for _, x in old])), [i for i in ids if i not in gone]


def _exact(lesson_id: int, old: Lesson, experts: Mapping[str, ExpertSpec], stale: Mapping[str, int]) -> bool:
    """Whether taking `old` out by its stored marks undoes what it added: they all counted (none
    of an expert removed, or of a persona changed since). Whatever the new lesson marks: an
    entry only `old` had added is left at 0, which routes as none does (profiles are read with
    `.get(skill, 0.0)` and summed), so `correct: false` after `true` needs no rebuild."""
    return all(e in experts and lesson_id > stale.get(e, 0) for e in old.marks)


def _without(evidence: RoutingEvidence, rows: Sequence[int], lessons: Sequence[Lesson]) -> RoutingEvidence:
    """The evidence without these learned rows (indices into it) and the lessons' profile marks."""
    return unmarked(_rows_kept(evidence, rows), lessons)


def _rows_kept(evidence: RoutingEvidence, rows: Sequence[int]) -> RoutingEvidence:
    """The evidence without these learned rows, every per-row record cut alike."""
    emb, labels, choices, seen = evidence.question_embeddings, evidence.labels, evidence.choices, evidence.observed
    keep = np.setdiff1d(np.arange(0 if emb is None else len(emb)), rows)
    return replace(evidence, question_embeddings=None if emb is None else emb[keep],
                   correct={n: c[keep] for n, c in (evidence.correct or {}).items()},
                   observed=None if seen is None else {n: o[keep] for n, o in seen.items()},
                   choices=None if choices is None else {n: [c[i] for i in keep] for n, c in choices.items()},
                   labels=None if labels is None else [labels[i] for i in keep],
                   learned_rows=evidence.learned_rows - len(rows))
