"""The live pool: the current `PoolSnapshot`, rebuilt from the store when profiles change."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from experts.types import ExpertSpec
from orchestrator.pipeline.snapshot import PoolSnapshot
from orchestrator.routing.evidence import RoutingEvidence
from orchestrator.routing.router import build_router
from orchestrator.services.deployment import Deployment
from orchestrator.store.db import Database
from orchestrator.store.models import ValidationAnswer, ValidationQuestion
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.state import StateRepository
from orchestrator.store.repositories.validation import ValidationRepository
from skills.embedder import Embedder
from skills.grading import extract_choice
from skills.vocabulary import SkillVocabulary

AGGREGATOR_KEY = "aggregator"


def load_evidence(
    db: Database, dataset: str, embedder: Embedder
) -> tuple[dict[str, ExpertSpec], RoutingEvidence, list[str]]:
    """Ready experts, their profiles and per-question records, and the profiled skill names."""
    with db.session() as s:
        rows = ExpertRepository(s).list(status="ready")
        experts = {r.name: ExpertSpec.model_validate(r.spec) for r in rows}
        profiles = {r.name: {sk.skill: sk.score for sk in r.skills} for r in rows}
        questions = ValidationRepository(s).questions(dataset)
        answers = ValidationRepository(s).answers([r.id for r in rows])
        texts = [q.payload["question"] for q in questions]
        labels = [str(q.payload.get("subject", "")) for q in questions]
        correct, choices = _answer_records(questions, answers, {r.id: r.name for r in rows})
        skills = sorted({sk for q in questions for sk in q.skills})
    embeddings = embedder.encode(texts) if texts else None
    return experts, RoutingEvidence(profiles, embeddings, correct, labels, choices), skills


def _answer_records(
    questions: Sequence[ValidationQuestion], answers: Sequence[ValidationAnswer], names: dict[int, str]
) -> tuple[dict[str, np.ndarray], dict[str, list[str | None]]]:
    """Per expert, per question: was it right, and which option letter did it pick (if any)."""
    index = {q.id: i for i, q in enumerate(questions)}
    correct = {n: np.zeros(len(questions), dtype=bool) for n in names.values()}
    choices: dict[str, list[str | None]] = {n: [None] * len(questions) for n in names.values()}
    for a in answers:
        i, name = index[a.question_id], names[a.expert_id]
        correct[name][i] = a.correct
        options = questions[i].payload.get("options") or ()
        if questions[i].payload.get("kind", "choice") == "choice" and options:
            choices[name][i] = extract_choice(a.text, len(options))
    return correct, choices


class PoolState:
    """Holds the current snapshot; `refresh` rebuilds it from the store, placement included."""

    def __init__(self, db: Database, dataset: str, embedder: Embedder, deployment: Deployment,
                 router_name: str = "symbolic", llm_aggregator: bool = True):
        self.db, self.dataset, self.embedder, self.router_name = db, dataset, embedder, router_name
        self.deployment = deployment
        self.llm_aggregator = llm_aggregator  # False: answers are voted on, no aggregator expert
        self._lock = threading.Lock()
        self._snapshot: PoolSnapshot | None = None

    @property
    def snapshot(self) -> PoolSnapshot:
        if self._snapshot is None:
            self.refresh()
        assert self._snapshot is not None
        return self._snapshot

    def refresh(self) -> PoolSnapshot:
        experts, evidence, skills = load_evidence(self.db, self.dataset, self.embedder)
        with self.db.session() as s:
            agg = (StateRepository(s).get(AGGREGATOR_KEY) or {}).get("name")
        if not self.llm_aggregator:
            agg = None
        elif agg not in experts:  # not benchmarked yet: fall back to the most competent expert
            agg = max(evidence.competence, key=lambda n: evidence.competence[n], default=None)
        snap = PoolSnapshot(experts, build_router(evidence, self.router_name), SkillVocabulary(skills, self.embedder),
                            agg, dict(evidence.competence), self.placement(), dict(self.deployment.workers))
        with self._lock:
            self._snapshot = snap
        return snap

    def placement(self, extra: ExpertSpec | None = None) -> dict[str, str]:
        """Where every stored expert that has not failed runs (and `extra`, not stored yet)."""
        with self.db.session() as s:
            rows = [r for r in ExpertRepository(s).list() if r.status != "failed"]
            specs = {r.name: ExpertSpec.model_validate(r.spec) for r in rows}
        if extra is not None:
            specs[extra.name] = extra
        return self.deployment.plan(specs)

    def worker_for(self, spec: ExpertSpec) -> str:
        return self.placement(spec)[spec.name]
