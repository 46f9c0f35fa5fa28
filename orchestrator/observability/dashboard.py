"""What the web dashboard shows, as one JSON-ready dict the page polls.

Reads the store through `DashboardRepository` and the live scheduling state (the worker's
residency timeline, the batching window); shapes it for the charts and nothing else. A recent
decision is its stored record (`domain.Decision`) as it is, beside the query's status and answer.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.domain import Decision
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.window import BatchingWindow
from orchestrator.scheduling.worker import Event
from orchestrator.services.pool import PoolState
from orchestrator.store.db import Database
from orchestrator.store.models import Query
from orchestrator.store.repositories.dashboard import DashboardRepository
from orchestrator.store.repositories.lessons import LessonRepository
from orchestrator.store.repositories.queries import decision_of

MAX_SKILLS = 24  # heatmap rows: the skills recent queries matched first, then the most telling ones
SHARE_BUCKETS = 20
MAX_SEGMENTS = 200
RECENT_BATCHES = 50

State = dict[str, Any]


@dataclass
class DashboardService:
    db: Database
    pool: PoolState
    fleet: Fleet
    window: BatchingWindow[Any, Any]
    # the queries accepted and not yet in a batch, chunks held back outside the window included
    # (`QueryService.waiting`, what 503 overloaded is decided on); None: the window's own count
    waiting: Callable[[], int] | None = None

    def state(self, limit: int = 20, reader: int | None = None) -> State:
        """`reader`: the client key asking (`api.deps.reader_of`); its page shows only the queries
        and recruitments it may read through GET /v1/queries/{id}; None shows every one."""
        with self.db.session() as s:
            repo = DashboardRepository(s)
            experts, scores = repo.experts(), repo.skill_scores()
            decisions = [readable_row(q) for q in repo.recent_queries(limit, reader)]
            recruits = repo.recruitments(reader=reader)
            lessons = LessonRepository(s).counts()
        matched = [sk for sk, _ in Counter(m["skill"] for d in decisions for m in d["skills"]).most_common()]
        return {
            "generated_at": time.time(),
            "pool": {"experts": [{"name": n, "status": st, "accuracy": a} for n, st, a in experts],
                     "aggregator": self.pool.snapshot.aggregator},
            "heatmap": heatmap(scores, matched),
            "decisions": decisions,
            "recruitment": recruitment_share(recruits),
            "timeline": self._timeline(),
            "scheduling": self._scheduling(),
            "budgets": budget_use(decisions),
            # the lessons the store holds now, by source: feedback on a query replaces its competition
            # or exploration lesson, which skillroute_lessons_total (learned, ever) still counts
            "learning": {"lessons": {k: lessons.get(k, 0) for k in ("competition", "explore", "feedback")},
                         "evidence": dict(sorted(self.pool.evidence_counts().items())),
                         "exploring": sorted(self.pool.snapshot.uncertain)},
        }

    def _scheduling(self) -> State:
        """The backlog in queries; `queue_depth`, the window's submissions (one holds a whole request);
        `batches_running`, the window's batches running now (at once only on disjoint workers)."""
        waiting = self.waiting or self.window.waiting
        return {"queries_waiting": waiting(), "queue_depth": self.window.depth(),
                "batches_running": self.window.running(),
                "batch_sizes": list(self.window.batch_sizes)[-RECENT_BATCHES:]}

    def _timeline(self) -> State:
        """The residency lanes of the workers that answer; the others named as unavailable."""
        read, unavailable = self.fleet.each(lambda w: (w.timeline(), w.resident()))
        timelines = {name: events for name, (events, _) in read.items()}
        return {**residency(timelines, {name: now for name, (_, now) in read.items()}),
                "unavailable_workers": unavailable}


def readable_row(q: Query) -> State:
    """`decision_row`; a stored record that no longer reads (another release's) is shown with
    empty fields and why, as recovery's `_read_back` fails such a query alone: one old row
    must not fail the whole page."""
    try:
        return decision_row(q, decision_of(q))
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        return decision_row(q, None, f"its stored decision could not be read: {exc}")


def decision_row(q: Query, d: Decision | None, unreadable: str | None = None) -> State:
    """The query's decision record as stored (empty fields while it has none), and how it went;
    `unreadable`: why its record could not be read (the row's error too, when it has none)."""
    record = d.model_dump(mode="json") if d else {"skills": [], "experts": [], "recruited": [], "aggregator": None,
                                                  "router": None, "mode": None, "seed": None, "budget": None}
    return {"id": q.id, "query": q.text, "status": q.status, "created_at": q.created_at.timestamp(),
            "answer": q.answer, "error": q.error or unreadable, "decision_error": unreadable,
            "latency_s": q.latency_s, **record}


def budget_use(decisions: Sequence[State]) -> State:
    """Predicted against measured latency and energy of the recent budgeted queries, oldest first."""
    rows = []
    for d in reversed(decisions):
        b = d.get("budget")
        if b:
            rows.append({"id": d["id"], "latency_budget_s": None if b["latency_ms"] is None else b["latency_ms"] / 1e3,
                         "predicted_latency_s": b["predicted_latency_s"], "measured_latency_s": b["measured_latency_s"],
                         "energy_budget_j": b["energy_j"], "predicted_energy_j": b["predicted_energy_j"],
                         "measured_energy_j": b["measured_energy_j"]})
    return {"queries": rows}


def heatmap(scores: Sequence[tuple[str, str, float]], matched: Sequence[str]) -> State:
    """Skill × expert profile scores; rows are the matched skills, then the largest |score|."""
    experts = list(dict.fromkeys(e for e, _, _ in scores))
    strength: dict[str, float] = {}
    for _, skill, v in scores:
        strength[skill] = max(strength.get(skill, 0.0), abs(v))
    rest = sorted((s for s in strength if s not in matched), key=lambda s: -strength[s])
    skills = (list(matched) + rest)[:MAX_SKILLS]
    row, col = {s: i for i, s in enumerate(skills)}, {e: i for i, e in enumerate(experts)}
    cells = [[col[e], row[s], v] for e, s, v in scores if s in row]
    return {"experts": experts, "skills": skills, "matched": [s for s in matched if s in row], "cells": cells}


def recruitment_share(rows: Sequence[tuple[datetime, list[Any]]]) -> State:
    """Each expert's share of recruitments per time bucket, over the span of the given queries."""
    if not rows:
        return {"experts": [], "times": [], "shares": {}}
    times = [t.timestamp() for t, _ in rows]
    width = max((times[-1] - times[0]) / SHARE_BUCKETS, 1.0)
    buckets: dict[int, Counter[str]] = {}
    for t, (_, names) in zip(times, rows, strict=True):
        # the newest time is exactly SHARE_BUCKETS widths in: it belongs to the last bucket, not a 21st
        bucket = min(int((t - times[0]) / width), SHARE_BUCKETS - 1)
        buckets.setdefault(bucket, Counter()).update(names)
    experts = sorted({n for c in buckets.values() for n in c})
    keys = sorted(buckets)
    shares = {e: [round(buckets[k][e] / max(buckets[k].total(), 1), 4) for k in keys] for e in experts}
    return {"experts": experts, "times": [times[0] + k * width for k in keys], "shares": shares}


def residency(timelines: Mapping[str, Sequence[Event]],
              resident: Mapping[str, Collection[str]] | None = None) -> State:
    """Load → unload intervals per worker and model from each worker's timeline; `end` None =
    still resident. One lane per (worker, model): the residency view per device. `resident`:
    each worker's models loaded now, so one whose load aged out of its bounded timeline still
    shows, open since the oldest event the timeline keeps."""
    segments = [lane for worker, events in timelines.items()
                for lane in _lanes(worker, events, (resident or {}).get(worker, ()))]
    return {"now": time.time(), "segments": _newest(segments)}


def _lanes(worker: str, events: Sequence[Event], resident: Collection[str]) -> list[State]:
    loaded: dict[str, float] = {}
    segments: list[State] = []
    for t, kind, key in events:
        if kind == "load":
            loaded[key] = t
        elif key in loaded:
            segments.append({"worker": worker, "model": key, "start": loaded.pop(key), "end": t})
    since = events[0][0] if events else time.time()
    loaded.update((k, since) for k in resident if k not in loaded)
    return segments + [{"worker": worker, "model": k, "start": t, "end": None} for k, t in loaded.items()]


def _newest(segments: list[State]) -> list[State]:
    """Every open segment (a model resident now, however long ago it loaded), then the most
    recently closed ones up to MAX_SEGMENTS in all; by start. Cutting by start dropped the
    resident models first: they have the oldest starts."""
    live = [s for s in segments if s["end"] is None]
    closed = sorted((s for s in segments if s["end"] is not None), key=lambda s: s["end"])
    room = max(0, MAX_SEGMENTS - len(live))
    return sorted(live + closed[len(closed) - min(room, len(closed)):], key=lambda s: s["start"])
