"""Profiling runs: the validation set, every expert's graded answers, the aggregator choice.

All experts being profiled answer in one batch, so each base model is loaded once however many
personas share it; the batch is handed to the workers a chunk at a time, so an expert
removed meanwhile stops there (`profiling_portions`). Results are stored, so a restart reuses
them instead of profiling again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError

from experts.replay import normalise_text
from experts.replay_ids import MAX_QUESTION_ID
from experts.types import ExpertSpec, Generation
from orchestrator.aggregation.prompt import aggregation_prompt
from orchestrator.pipeline.keywords import KeywordReader
from orchestrator.pools.loader import profiling_split
from orchestrator.pools.schema import PoolConfig, ValidationSource
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.planner import Job
from orchestrator.services.pool import AGGREGATOR_KEY
from orchestrator.services.profiling_portions import PortionedRun
from orchestrator.store.db import Database
from orchestrator.store.models import ValidationQuestion
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.state import StateRepository
from orchestrator.store.repositories.validation import Graded, ValidationRepository
from skills.aggregator_bench import SyntheticTask, build_synthetic_tasks, pick_aggregator
from skills.datasets import (
    LabelledQuestion,
    arithmetic_questions,
    format_prompt,
    load_mmlu,
    load_mmlu_pro,
    sample_spread,
)
from skills.embedder import Embedder
from skills.grading import grade
from skills.profiling import build_profile, global_competence
from skills.vocabulary import SEED_SKILLS, SkillVocabulary

Progress = Callable[[int, int], None]
Timings = Callable[[ExpertSpec, str, Sequence[Generation]], None]  # (expert, its worker, its replies)
PROGRESS_WRITE_S = 1.0
Row = tuple[str, dict[str, Any], list[str], bytes]  # qid, payload, skills, embedding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationItem:
    row_id: int
    question: LabelledQuestion
    skills: list[str]


def load_source(src: ValidationSource, seed: int) -> list[LabelledQuestion]:
    if src.kind == "mmlu":
        return load_mmlu(src.split, per_subject=src.per_subject, subjects=src.subjects, seed=seed)
    if src.kind == "mmlu_pro":
        items = first_copies(load_mmlu_pro(Path(src.path)))
        if src.split != "all":
            wanted = profiling_split(src.path, src.split, src.test_size, src.split_seed)
            items = [q for q in items if q.id in wanted]
        return sample_spread(items, src.limit, seed) if src.limit else items
    return arithmetic_questions(src.n, seed)


def first_copies(questions: Sequence[LabelledQuestion]) -> list[LabelledQuestion]:
    """The questions less exact repeats (same text and options under a later id: 36 in MMLU-Pro,
    each in its first copy's category, so the one kept is the recording's first), dropped before
    any is drawn: a replay expert cannot tell copies apart and answers each with the first's
    recorded letter, so profiling graded that letter twice and never the copy's own."""
    kept: dict[tuple[str, tuple[str, ...]], LabelledQuestion] = {}
    for q in questions:
        kept.setdefault((normalise_text(q.question), tuple(map(normalise_text, q.options))), q)
    return list(kept.values())


def merge_sources(per_source: Sequence[Sequence[LabelledQuestion]]) -> list[LabelledQuestion]:
    """The sources' questions, each id once, as the store keeps one row per id and refuses a set
    that repeats one. The same question from two sources (two arithmetic sources draw from one
    seed, MMLU sources overlap) is asked once: twice would count one answer twice. Another
    question under a taken id (two recordings numbered alike) gets its source's index."""
    kept: dict[str, LabelledQuestion] = {}
    for index, questions in enumerate(per_source):
        for q in questions:
            if kept.get(q.id) != q:
                _keep(kept, dataclasses.replace(q, id=_renamed(q.id, index)) if q.id in kept else q)
    if repeated := sum(map(len, per_source)) - len(kept):
        log.info("profiling set: %d questions given by more than one source are asked once", repeated)
    return list(kept.values())


def _renamed(qid: str, index: int) -> str:
    """`qid@index`, within the store's MAX_QUESTION_ID (a long id's end gives way to a digest
    of it, so two long ids stay two)."""
    renamed = f"{qid}@{index}"
    if len(renamed) <= MAX_QUESTION_ID:
        return renamed
    tail = f"~{hashlib.sha256(qid.encode()).hexdigest()[:12]}@{index}"
    return qid[:MAX_QUESTION_ID - len(tail)] + tail


def _keep(kept: dict[str, LabelledQuestion], q: LabelledQuestion) -> None:
    if kept.get(q.id, q) != q:  # one source repeating an id on other questions
        raise ValueError(f"validation question id {q.id!r} names two different questions")
    kept[q.id] = q


class ProfilingService:
    """Profiles experts on the workers they run on (`placement`: expert name → worker name)."""

    def __init__(self, db: Database, fleet: Fleet, embedder: Embedder, config: PoolConfig,
                 placement: Callable[[], Mapping[str, str]], timed: Timings | None = None):
        self.db, self.fleet, self.embedder, self.config, self.placement = db, fleet, embedder, config, placement
        self.timed = timed  # told each expert's replies and worker: what they took teaches the budgets
        self.dataset = config.validation.dataset_key()

    def validation_set(self) -> list[ValidationItem]:
        """The stored profiling set, building (and storing) it on first use."""
        rows = self._stored_set()
        if not rows:
            self._store_set(self._build_rows())
            rows = self._stored_set()
        return [ValidationItem(r.id, LabelledQuestion(**_as_question(r.payload)), list(r.skills)) for r in rows]

    def questions_stored(self) -> int:
        """How many questions a profiling run asks each expert (0 before the set is first built)."""
        with self.db.session() as s:
            return ValidationRepository(s).count(self.dataset)

    def _stored_set(self) -> Sequence[ValidationQuestion]:
        with self.db.session() as s:
            return ValidationRepository(s).questions(self.dataset)

    def _store_set(self, rows: Sequence[Row]) -> None:
        """Store the set unless another service stored it first (two replicas' starts both
        found none): its rows, built from the same configuration, are the ones read back. A
        refusal with anything else stored under the key fails: profiling on it would profile
        on other questions, or on none."""
        try:
            with self.db.session() as s:
                ValidationRepository(s).add_questions(self.dataset, rows)
        except IntegrityError as exc:
            stored = sorted(r.qid for r in self._stored_set())
            if stored != sorted(qid for qid, *_ in rows):
                raise RuntimeError(f"the store refused validation set {self.dataset} ({len(rows)} questions) but "
                                   f"holds another ({len(stored)} questions) under its key: {exc.orig}") from exc

    def _build_rows(self) -> list[Row]:
        """Each question with its skills and its embedding (embedded once: it reads the skills
        and is stored for the router's memory, so no start embeds the set again)."""
        cfg = self.config.validation
        questions = merge_sources([load_source(src, cfg.seed) for src in cfg.sources])
        if not questions:  # profiled on nothing, every expert would be ready and routed at random
            raise RuntimeError("the pool's validation sources give no questions: profiling needs some "
                               "(see the pool file's validation.sources)")
        texts = [q.question for q in questions]
        embeddings = self.embedder.encode(texts)
        skills = self._keywords(texts) if cfg.keyword_mode == "llm" and self._reader_kept() else [
            [m.skill for m in ms] for ms in SkillVocabulary(SEED_SKILLS, self.embedder).nearest_for_embeddings(
                texts, embeddings, cfg.skills_per_question)]
        return [(q.id, dataclasses.asdict(q), s, e.astype(np.float32).tobytes())
                for q, s, e in zip(questions, skills, embeddings, strict=True)]

    def _reader_kept(self) -> bool:
        """Whether the keyword expert may read the set's keywords: one removed over the API stays
        removed at a start, and was loaded again to read them. Its set falls back to the skills
        nearest each question's embedding, as a live query's do (`pipeline.decide`)."""
        name = self.config.validation.keyword_expert
        with self.db.session() as s:
            row = ExpertRepository(s).by_name(str(name))
            removed = row is not None and row.status == "removed"
        if removed:
            log.warning("keyword_mode llm: the keyword expert %r was removed: the validation set's skills are "
                        "the ones nearest each question's embedding", name)
        return not removed

    def _keywords(self, texts: list[str]) -> list[list[str]]:
        """Symbolic-MoE's profiling skills: the keyword expert's agreed keywords per question.
        A failed keyword expert raises `KeywordsFailed` before anything is stored, so the run
        fails visibly and a later one reads the keywords again."""
        name = self.config.validation.keyword_expert
        spec = next(e for e in self.config.experts if e.name == name)
        reader = KeywordReader(self.fleet, self.config.validation.keyword_samples, seed=self.config.validation.seed)
        worker = self.placement().get(spec.name, self.fleet.default)
        return reader.read_reporting(spec, worker, texts).required(spec.name)

    def profile(self, experts: Sequence[tuple[int, ExpertSpec]], progress: Progress | None = None) -> None:
        """Every expert answers every validation question (one batch, each on its worker, the
        workers at once, a chunk at a time: `profiling_portions`); store graded profiles.
        An expert most of whose answers failed (a model that will not load, a lost server) is
        marked failed with the first error. One removed meanwhile stops: its remaining
        questions are dropped and nothing is stored for it (a disabled one is profiled on)."""
        items, where = self.validation_set(), self.placement()
        prompts = [format_prompt(it.question) for it in items]  # once, not once per expert
        jobs = self._by_worker(where, [(spec, self._job(eid, spec, it.row_id, prompt))  # a question's jobs together
                                       for it, prompt in zip(items, prompts, strict=True) for eid, spec in experts])
        tracked = _Tracked(self.db, [eid for eid, _ in experts], len(items), progress)
        gens, dropped = PortionedRun(self.fleet, jobs, self._removed, tracked.progress, tracked.answered).run()
        for eid, spec in experts:
            if eid in dropped:
                continue
            replies = [gens[f"{eid}:{it.row_id}"] for it in items]
            self._tell(spec, where, replies)
            errors = [g.error for g in replies if g.error is not None]
            if len(errors) * 2 > len(replies):
                self._fail(eid, f"profiling failed: {errors[0]}")
                continue
            self._save(eid, list(zip(items, replies, strict=True)))

    def _removed(self, ids: Collection[int]) -> set[int]:
        """Of these experts, those removed (or gone from the store) since their run began."""
        with self.db.session() as s:  # one read, not one an expert: asked before each portion
            status = {r.id: r.status for r in ExpertRepository(s).list(profiles=False)}
        return {i for i in ids if status.get(i, "removed") == "removed"}

    def _by_worker(self, where: Mapping[str, str], jobs: Sequence[tuple[ExpertSpec, Job]]) -> dict[str, list[Job]]:
        out = defaultdict(list)
        for spec, job in jobs:
            out[where.get(spec.name, self.fleet.default)].append(job)
        return out

    def _tell(self, spec: ExpertSpec, where: Mapping[str, str], replies: Sequence[Generation]) -> None:
        if self.timed is not None:
            self.timed(spec, where.get(spec.name, self.fleet.default), [g for g in replies if g.error is None])

    def _fail(self, expert_id: int, error: str) -> None:
        with self.db.session() as s:
            ExpertRepository(s).set_status(expert_id, "failed", error)

    def _job(self, eid: int, spec: ExpertSpec, row_id: int, prompt: str) -> Job:
        max_tokens = self.config.generation.profiling_max_tokens
        req = spec.request(f"{eid}:{row_id}", prompt, max_tokens)
        return Job(req.request_id, spec.base, req)

    def _save(self, expert_id: int, replies: list[tuple[ValidationItem, Generation]]) -> None:
        """Grade and store the answers given. A failed reply (a timeout, a lost server) is no
        answer: stored as none, it is unobserved, not wrong (`routing.knn_router`), and moves
        neither the accuracy nor a skill score."""
        answered = [(it, g) for it, g in replies if g.error is None]
        graded = [_graded(it, g) for it, g in answered]
        marks = [(it.skills, a.correct) for (it, _), a in zip(answered, graded, strict=True)]
        profile = build_profile(str(expert_id), marks)
        with self.db.session() as s:
            if (row := ExpertRepository(s).get(expert_id)) is None or row.status == "removed":
                return  # removed during its last portion: nothing is stored for it
            ValidationRepository(s).save_answers(expert_id, graded)
            ExpertRepository(s).save_profile(expert_id, profile.scores, profile.accuracy)
            ExpertRepository(s).set_status(expert_id, "ready")

    def choose_aggregator(self, progress: Progress | None = None) -> str | None:
        """The pool's fixed aggregator, or else the best synthesiser among the ready experts,
        benchmarking those that have no score yet."""
        if self.config.aggregator.mode == "vote":
            return None  # the answers are voted on: no aggregator LLM to choose
        with self.db.session() as s:
            measured = _measured(StateRepository(s).get(AGGREGATOR_KEY))
        if fixed := self.config.aggregator.fixed:  # a choice, not a score: the measured ones stay as they were
            with self.db.session() as s:
                return _put_aggregator(StateRepository(s), fixed, measured, fixed=True)
        return self._benchmarked_choice(measured, progress)

    def _benchmarked_choice(self, scored: dict[str, float], progress: Progress | None) -> str | None:
        items = {str(it.row_id): it for it in self.validation_set()}
        with self.db.session() as s:
            rows = ExpertRepository(s).list(status="ready")
            specs = {r.name: ExpertSpec.model_validate(r.spec) for r in rows}
            competence = global_competence({r.name: r.profile_total or 0.0 for r in rows})
            chains: dict[str, list[tuple[str, bool]]] = {}
            for a in ValidationRepository(s).answers([r.id for r in rows]):
                chains.setdefault(str(a.question_id), []).append((a.text, a.correct))
        questions = [dataclasses.replace(it.question, id=rid) for rid, it in items.items()]
        tasks = build_synthetic_tasks(questions, chains, self.config.aggregator.tasks, self.config.validation.seed)
        todo = {n: sp for n, sp in specs.items() if n not in scored}
        read = set(scored)
        if tasks and todo:
            scored.update(self._bench(todo, tasks, progress))
        with self.db.session() as s:  # read again at the write: the benchmark took a while
            scored = _current(StateRepository(s), ExpertRepository(s), {n: v for n, v in scored.items() if n in specs},
                              read, specs)
            # none scored: stored as none, so a name chosen before (a fixed one, say) is not kept
            name = pick_aggregator(scored, competence) if scored else None
            return _put_aggregator(StateRepository(s), name, scored)

    def _bench(
        self, specs: dict[str, ExpertSpec], tasks: list[SyntheticTask], progress: Progress | None
    ) -> dict[str, float]:
        max_tokens = self.config.generation.aggregator_max_tokens
        jobs = []
        for name, spec in specs.items():
            for ti, t in enumerate(tasks):
                prompt = aggregation_prompt(format_prompt(t.question), t.responses)
                req = spec.request(f"{name}|{ti}", prompt, max_tokens)
                jobs.append((spec, Job(req.request_id, spec.base, req)))
        where = self.placement()
        gens = self.fleet.execute(self._by_worker(where, jobs), progress=progress)  # a failed one grades wrong
        for name, spec in specs.items():
            self._tell(spec, where, [gens[f"{name}|{ti}"] for ti in range(len(tasks))])
        return {n: sum(_grade(t.question, gens[f"{n}|{ti}"].text) for ti, t in enumerate(tasks)) / len(tasks)
                for n in specs}


def _put_aggregator(state: StateRepository, name: str | None, accuracy: dict[str, float],
                    fixed: bool = False) -> str | None:
    """Store the aggregator choice with the benchmark scores it was made on; the name chosen."""
    state.put(AGGREGATOR_KEY, {"name": name, "accuracy": accuracy, "fixed": fixed})
    return name


def _current(state: StateRepository, experts: ExpertRepository, scored: dict[str, float], read: set[str],
             specs: Mapping[str, ExpertSpec]) -> dict[str, float]:
    """The scores still true now: a persona changed during the benchmark dropped its expert's
    stored score (`experts._forget_persona`), which writing back what was read brought back for
    good, and a score measured under the old persona is not the new one's."""
    stored = _measured(state.get(AGGREGATOR_KEY))
    now = {r.name: ExpertSpec.model_validate(r.spec) for r in experts.list()}
    return {n: v for n, v in scored.items() if now.get(n) == specs[n] and (n not in read or n in stored)}


def _measured(state: Mapping[str, Any] | None) -> dict[str, float]:
    """The benchmark scores stored with the aggregator choice. A choice stored before `fixed` was
    recorded (no such key) whose only score is its own 1.0 is how a fixed choice was written
    then, not a measurement: dropped, so the benchmark runs that expert like any other."""
    accuracy = dict((state or {}).get("accuracy", {}))
    if state is not None and "fixed" not in state and accuracy == {state.get("name"): 1.0}:
        return {}
    return accuracy


def _grade(q: LabelledQuestion, text: str) -> bool:
    return grade(text, q.answer, q.kind, n_options=max(len(q.options), 2))


def _graded(item: ValidationItem, reply: Generation) -> Graded:
    """The answer graded, with what its reply took (the budgets learn each model's pace from it)."""
    ok = _grade(item.question, reply.text)
    return Graded(item.row_id, reply.text, ok, reply.prompt_tokens, reply.completion_tokens, reply.latency_s)


def _as_question(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "options": tuple(payload.get("options") or ())}


class _Tracked:
    """A run's progress: to the caller's bar at every step (the run's answers), to the store per
    expert (its own answers of its own questions: what GET /v1/experts shows) at the start, so
    its total shows before the first chunk ends, then at most once per PROGRESS_WRITE_S (a
    recorded pool answers thousands of questions a second, and a transaction per step would
    cost more than the answers). Each expert's job ids start with its id (`_job`)."""

    def __init__(self, db: Database, ids: Sequence[int], questions: int, bar: Progress | None):
        self.db, self.questions, self.bar = db, questions, bar
        self.done = dict.fromkeys(ids, 0)
        self.last = time.monotonic()
        self._write()

    def answered(self, job_id: str) -> None:
        self.done[int(job_id.split(":", 1)[0])] += 1

    def progress(self, done: int, total: int) -> None:
        if done == total or time.monotonic() - self.last >= PROGRESS_WRITE_S:
            self.last = time.monotonic()
            self._write()
        if self.bar:
            self.bar(done, total)

    def _write(self) -> None:
        with self.db.session() as s:
            for eid, n in self.done.items():
                ExpertRepository(s).set_progress(eid, n, self.questions)
