"""Answering a batch of decided queries across the fleet: experts, stand-ins, aggregation.

Every expert generation goes to the worker its expert runs on, and the workers run at once
(`scheduling.fleet`); a query's aggregation is queued as soon as its own expert answers are in.
A failed generation fails only that answer. For a routed query the next-ranked expert that can
take it stands in (once per failed draw; under a budget, only one that keeps the query within it); a query
with at least one good answer is still aggregated and answered, and one left with none fails
alone, naming each failure. An aggregator that fails leaves the answer to the best-ranked
expert's reply, as does a query with no aggregator (one gone from the pool since admission)
and a vote that finds no letter (or, on free text, nothing to vote on). Under `auto`, a
budgeted query on lettered options is settled by the vote of the answers that gave a letter
even where one gave none: its plan paid for no aggregator. An aggregation prompt over the
aggregator's context window is never sent (a sure failure, after a model load): recorded as the
aggregator's failure, it leaves the answer to the vote where the vote decides (the lettered
answers'), else to the best-ranked expert's reply. The decision records every failure, every
stand-in, and each worker's predicted and measured time in the batch. A step of one query that raises (a bug, a
recording that will not read) fails that query alone, naming the error; the others, and the
batch, go on.

Each query is handed to `finished` as soon as it is done (a short one finishes before the
batch's long ones), so it can be stored and replied to then; its outcome's device times are
those up to that moment. `run` still returns every outcome at the end, with the batch's final
device times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from experts.backend import BackendError
from experts.options import BackendOptions
from experts.traits import check_prompt, known_answer, traits
from experts.types import ExpertSpec, Generation
from orchestrator.aggregation.prompt import aggregation_prompt
from orchestrator.aggregation.vote import lettered_vote, option_count, vote_answer, vote_decides
from orchestrator.budgets.planner import BudgetPlanner, measured
from orchestrator.budgets.stand_in import stand_in_fits, stand_in_start
from orchestrator.domain import Answer, Ask, Decision, DeviceTime, Failure, Outcome, Role
from orchestrator.pipeline.decide import DIRECT, GenerationLimits
from orchestrator.pipeline.sampling import asked, sample_seed
from orchestrator.pipeline.snapshot import PoolSnapshot
from orchestrator.pipeline.stream import StreamHub, sink_for
from orchestrator.routing.learning import Lesson, scored
from orchestrator.scheduling.fleet import Dispatch, Fleet
from orchestrator.scheduling.planner import Job
from skills.grading import extract_choice

log = logging.getLogger(__name__)
Finished = Callable[[int, Outcome], None]  # (a query's place in the batch, its outcome once it is done)


@dataclass
class _Query:
    place: int  # in the batch
    ask: Ask
    decision: Decision
    embedding: np.ndarray | None = None
    outstanding: int = 0
    answers: dict[int, Answer] = field(default_factory=dict)  # draw position → its answer
    scored: dict[str, Answer] = field(default_factory=dict)  # competitors' answers, for the lesson
    marks: dict[str, bool] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    starts: dict[str, float] = field(default_factory=dict)  # each stand-in's predicted start, under a budget
    tried: set[str] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    aggregate: Answer | None = None
    text: str = ""
    error: str | None = None
    done_at: float | None = None


@dataclass(frozen=True)
class _Sent:
    query: int
    draw: int  # the position of a recruited expert's draw; -1: the aggregation; -2: a competitor
    expert: str


class BatchRun:
    def __init__(self, pool: PoolSnapshot, asks: Sequence[Ask], decisions: Sequence[Decision], fleet: Fleet,
                 planner: BudgetPlanner, limits: GenerationLimits, aggregation: str, fallback: bool = True,
                 embeddings: Sequence[np.ndarray | None] | None = None, streams: StreamHub | None = None,
                 finished: Finished | None = None, options: BackendOptions | None = None):
        self.pool, self.fleet, self.planner, self.limits = pool, fleet, planner, limits
        self.options = options or BackendOptions()  # how the aggregator's tokenizer is found
        self.streams = streams  # live clients of streamed queries (pipeline/stream.py)
        self.aggregation, self.fallback = aggregation, fallback
        self.finished = finished
        embs = embeddings or [None] * len(asks)
        self.queries = [_Query(i, a, d, e) for i, (a, d, e) in enumerate(zip(asks, decisions, embs, strict=True))]
        # done, not handed to `finished` yet, each with its workers' predicted seconds then
        self._done: list[tuple[_Query, dict[str, float]]] = []
        self.lessons: dict[int, Lesson] = {}  # query's place → what its competition or exploration taught
        self.sites = pool.sites()
        self._sent: dict[str, _Sent] = {}
        self._predicted: dict[str, float] = {}  # per worker: its jobs' predicted seconds
        self._greedy: set[tuple[str, str, str]] = set()
        self._lock, self._open = threading.Lock(), len(self.queries)
        self._started = time.perf_counter()
        self._dispatch: Dispatch = fleet.dispatch(self._reply, self._keep_last())
        self._held: dict[str, list[Job]] | None = None

    def run(self) -> list[Outcome]:
        with self._lock:
            self._held = {}  # the first jobs go out together, one take per worker
            for qi in range(len(self.queries)):
                self._guarded(qi, partial(self._start, qi))
            held, self._held = self._held, None
            for worker, jobs in held.items():
                self._dispatch.submit(worker, jobs)
        self._hand_done()
        busy = self._dispatch.wait()  # the device threads have handed on all they finished
        return [self._outcome(q, busy, self._predicted) for q in self.queries]

    def _start(self, qi: int) -> None:
        q = self.queries[qi]
        for j, name in enumerate(q.decision.recruited):
            self._send_expert(qi, j, name)
        for name in q.decision.competitors:
            self._send_competitor(qi, name)
        if not q.outstanding:
            self._experts_done(qi)

    def _guarded(self, qi: int, step: Callable[[], None]) -> None:
        """Run one step of query `qi`. If it raises, the query fails alone, naming the error, and
        its later replies are dropped: left unfinished it would hold the batch, and the window
        behind it, for good."""
        try:
            step()
        except Exception as exc:
            log.exception("query %d of the batch failed in the pipeline", qi)
            if (q := self.queries[qi]).done_at is None:
                self._finish(q, "", f"internal error: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ sending

    def _keep_last(self) -> dict[str, str]:
        """Per worker, the aggregators' model the batch will need last (kept resident)."""
        if self.aggregation == "vote":
            return {}
        aggregators = [q.decision.aggregator for q in self.queries if q.decision.aggregator in self.pool.experts
                       and not traits(self.pool.experts[q.decision.aggregator].base).served_elsewhere]  # no room
        keep: dict[str, str] = {}
        for agg in sorted(set(aggregators), key=aggregators.count):  # the most used wins a shared worker
            keep[self._worker(agg)] = self.pool.experts[agg].base.key
        return keep

    def _worker(self, expert: str) -> str:
        return self.pool.worker_of(expert, self.fleet.default)

    def _send(self, job_id: str, sent: _Sent, spec: ExpertSpec, text: str, max_tokens: int, seed_offset: int) -> None:
        q = self.queries[sent.query]
        req = asked(spec.request(job_id, text, max_tokens), q.ask)
        seed = sample_seed(req.sampling.seed, q.decision.seed, seed_offset)
        req.sampling = req.sampling.model_copy(update={"seed": seed})
        worker = self._worker(sent.expert)
        self._sent[job_id] = sent
        far = traits(spec.base).served_elsewhere  # its server's time, never its worker's (`Dispatch._elsewhere`)
        if not far:
            q.workers.add(worker)
        if not far and (req.sampling.temperature > 0 or (worker, sent.expert, text) not in self._greedy):
            self._greedy.add((worker, sent.expert, text))  # a greedy repeat runs once (coalesced)
            cost = self.planner.reply_cost(spec, text, req.sampling.max_tokens, self.sites[sent.expert])
            self._predicted[worker] = self._predicted.get(worker, 0.0) + cost.latency_s
        job = Job(job_id, spec.base, req)
        if (sink := sink_for(self.streams, q.ask, q.decision, sent.draw, sent.expert)) is not None:
            self._dispatch.submit_stream(worker, job, sink)  # a client watches this reply being written
        elif self._held is not None:
            self._held.setdefault(worker, []).append(job)
        else:
            self._dispatch.submit(worker, [job])

    def _send_expert(self, qi: int, draw: int, name: str) -> None:
        q = self.queries[qi]
        q.outstanding += 1
        q.tried.add(name)
        attempt = len(q.tried)
        self._send(f"{qi}:{draw}:{attempt}", _Sent(qi, draw, name), self.pool.experts[name], q.ask.text,
                   self.limits.expert_max_tokens, draw)

    def _send_competitor(self, qi: int, name: str) -> None:
        q = self.queries[qi]
        q.outstanding += 1
        self._send(f"{qi}:c:{name}", _Sent(qi, -2, name), self.pool.experts[name], q.ask.text,
                   self.limits.expert_max_tokens, 0)

    # ------------------------------------------------------------------ replies

    def _reply(self, job_id: str, gen: Generation) -> None:
        with self._lock:
            sent = self._sent.pop(job_id)
            if self.queries[sent.query].done_at is None:  # else it failed already: nothing waits for this
                self._guarded(sent.query, partial(self._replied, sent, gen))
        self._hand_done()

    def _replied(self, sent: _Sent, gen: Generation) -> None:
        if sent.draw == -1:
            self._aggregated(sent, gen)
            return
        q = self.queries[sent.query]
        q.outstanding -= 1  # first: a stand-in sent below counts itself
        if sent.draw == -2:
            self._competed(q, sent, gen)
        elif gen.error is None:
            q.answers[sent.draw] = _answer(sent.expert, "expert", gen)
        else:
            q.failures.append(Failure(expert=sent.expert, role="expert", error=gen.error))
            if (stand_in := self._stand_in(q, sent.expert)) is not None:
                q.fallbacks.append(stand_in)
                if q.decision.budget is not None:
                    q.starts[stand_in] = stand_in_start(q.decision.budget, sent.expert, q.starts)
                self._send_expert(sent.query, sent.draw, stand_in)
        if not q.outstanding:
            self._experts_done(sent.query)

    def _competed(self, q: _Query, sent: _Sent, gen: Generation) -> None:
        if gen.error is None:
            q.scored[sent.expert] = _answer(sent.expert, "competitor", gen)
        else:
            q.failures.append(Failure(expert=sent.expert, role="competitor", error=gen.error))

    def _stand_in(self, q: _Query, replaced: str) -> str | None:
        """The next-ranked expert not tried yet for this query, when it may have one. The ranking
        was made at admission: an expert removed or disabled since then is no longer in the pool.
        An expert still being explored is never one: it is not recruited, and as a stand-in it
        answered twice and was scored against its own answer. Under a budget, only one that
        keeps the whole query within it (`budgets.stand_in`)."""
        if not self.fallback or q.decision.router == DIRECT:
            return None
        return next((s.name for s in q.decision.experts if s.name not in q.tried and s.name in self.pool.experts
                     and s.name not in self.pool.uncertain and self._fits(q, replaced, s.name)), None)

    def _fits(self, q: _Query, replaced: str, name: str) -> bool:
        """Whether `name` standing in keeps the query within its budget (none: it does)."""
        budget = q.decision.budget
        if budget is None:
            return True
        elapsed = time.perf_counter() - self._started
        return name in {c.expert for c in budget.candidates} and stand_in_fits(budget, [*q.tried], replaced, name,
                                                                               q.starts, elapsed)

    def _experts_done(self, qi: int) -> None:
        q = self.queries[qi]
        answers = [q.answers[j] for j in sorted(q.answers)]
        if q.scored:
            self._score(qi, q, answers)
        if not answers:
            errors = "; ".join(f"{f.expert}: {f.error}" for f in q.failures) or "no expert was recruited"
            self._finish(q, "", f"every expert failed: {errors}")
        elif len({(a.expert, a.text.strip()) for a in answers}) == 1:
            self._finish(q, answers[0].text)  # one answer, or one greedy expert drawn k times
        elif self.aggregation == "vote":
            self._finish(q, _voted(answers, q, self.pool))
        elif self.aggregation == "auto" and (voted := lettered_vote(
                q.ask.text, [(a.expert, a.text) for a in answers], q.decision.experts,
                self.pool.router.reliability, self.pool.router.option_prior)) is not None:
            self._finish(q, voted)
        elif q.decision.budget is not None and vote_decides(self.aggregation, q.ask.text):
            self._finish(q, _vote_of_lettered(q, answers, self.pool))  # its plan paid for no aggregator
        elif (agg := q.decision.aggregator) is not None and agg in self.pool.experts:
            self._aggregate(qi, agg, answers)
        else:  # no aggregator (none chosen, or gone from the pool since admission): as if it failed
            self._finish(q, _best_ranked(q).text)

    def _aggregate(self, qi: int, agg: str, answers: Sequence[Answer]) -> None:
        """Send the answers to the aggregator, unless its prompt overflows the aggregator's context
        window (admission checked the question alone): that generation would fail only after loading
        the model. The query is then settled without it, the vote where it decides, the failure kept."""
        q, spec = self.queries[qi], self.pool.experts[agg]
        prompt = aggregation_prompt(q.ask.text, [a.text for a in _ranked(q, answers)])
        writes = min(self.limits.tokens(q.ask.max_tokens).aggregator_max_tokens, spec.sampling.max_tokens)
        try:
            check_prompt(spec, prompt, writes, self.options)  # the tokenizer alone: no weights loaded
        except BackendError as exc:
            q.failures.append(Failure(expert=agg, role="aggregator", error=str(exc)))
            voted = vote_decides(self.aggregation, q.ask.text)
            self._finish(q, _vote_of_lettered(q, answers, self.pool) if voted else _best_ranked(q).text)
            return
        self._send(f"{qi}:agg", _Sent(qi, -1, agg), spec, prompt, self.limits.aggregator_max_tokens, 0)

    def _score(self, qi: int, q: _Query, answers: Sequence[Answer]) -> None:
        """Mark every answer of a competed (or explored) query, and keep the lesson it taught."""
        texts = {a.expert: a.text for a in answers} | {e: a.text for e, a in q.scored.items()}
        weights = {s.name: s.weight for s in q.decision.experts}
        gold = next((g for e in texts if (g := known_answer(self.pool.experts[e].base, q.ask.text))), None)
        explored = {e for e in texts if e in self.pool.uncertain}  # marked against the others, no vote of their own
        q.marks, letters, reference = scored(texts, weights, self.pool.router.reliability, gold, q.ask.text,
                                             explored=explored)
        if q.embedding is not None and reference is not None:  # none: a lone answer or a tie teaches nothing
            source = "competition" if q.decision.competition else "explore"
            skills = tuple(m.skill for m in q.decision.skills)
            self.lessons[qi] = Lesson(q.embedding, skills, q.marks, letters, source,
                                      "gold" if gold is not None else "consensus")

    def _aggregated(self, sent: _Sent, gen: Generation) -> None:
        q = self.queries[sent.query]
        if gen.error is None:
            q.aggregate = _answer(sent.expert, "aggregator", gen)
            self._finish(q, gen.text)
            return
        q.failures.append(Failure(expert=sent.expert, role="aggregator", error=gen.error))
        self._finish(q, _best_ranked(q).text)

    def _finish(self, q: _Query, text: str, error: str | None = None) -> None:
        q.text, q.error, q.done_at = text, error, time.perf_counter()
        if self.finished is not None:  # handed on by `_hand_done`, outside the lock
            self._done.append((q, {w: self._predicted.get(w, 0.0) for w in q.workers}))
        self._open -= 1
        if not self._open:
            self._dispatch.finish()

    def _hand_done(self) -> None:
        """Hand each query finished since the last call to `finished`, outside the lock: storing
        it must not hold the replies of the batch's other queries. A done query changes no more."""
        with self._lock:
            done, self._done = self._done, []
        if not done or self.finished is None:
            return
        busy = self._dispatch.busy()
        for q, predicted in done:
            try:
                self.finished(q.place, self._outcome(q, busy, predicted))
            except Exception:  # the receiver's own failure: the query is still returned by `run`
                log.exception("handing on finished query %d failed", q.place)

    # ------------------------------------------------------------------ outcomes

    def _outcome(self, q: _Query, busy: Mapping[str, float], predicted: Mapping[str, float]) -> Outcome:
        """The query's outcome, with its workers' predicted and measured seconds as given: so far
        in the batch (handed on as it finishes), or the whole batch's (`run`'s return)."""
        latency = (q.done_at or time.perf_counter()) - self._started
        devices = [DeviceTime(worker=w, device=self._device(w), predicted_s=predicted.get(w, 0.0),
                              measured_s=busy.get(w)) for w in sorted(q.workers)]
        budget = q.decision.budget and measured(q.decision.budget, latency, self.planner.power_w)
        scores = {e: float(ok) for e, ok in q.marks.items()}
        decision = q.decision.model_copy(update={"failures": q.failures, "fallbacks": q.fallbacks,
                                                 "devices": devices, "budget": budget, "competition_scores": scores})
        answers = ([q.answers[j] for j in sorted(q.answers)] + list(q.scored.values())
                   + ([q.aggregate] if q.aggregate else []))
        return Outcome(decision=decision, answers=answers, text=q.text, latency_s=latency, stages_s=latency,
                       error=q.error)

    def _device(self, worker: str) -> str:
        spec = self.pool.workers.get(worker)
        return spec.device if spec is not None else worker


def _answer(expert: str, role: Role, g: Generation) -> Answer:
    return Answer(expert=expert, role=role, text=g.text, prompt_tokens=g.prompt_tokens,
                  completion_tokens=g.completion_tokens, latency_s=g.latency_s, finish_reason=g.finish_reason)


def _voted(answers: Sequence[Answer], q: _Query, pool: PoolSnapshot) -> str:
    """The router-weighted vote of the answers' letters (no aggregator stage); with no letter to
    vote on, the best-ranked answer, as when an aggregator fails (draw 0 is a random draw)."""
    result = vote_answer([(a.expert, a.text) for a in answers], q.decision.experts, pool.router.reliability,
                         q.ask.text, pool.router.option_prior)
    return f"Answer: {result.answer}" if result.answer else _best_ranked(q).text


def _vote_of_lettered(q: _Query, answers: Sequence[Answer], pool: PoolSnapshot) -> str:
    """A vote-decided query settled without the aggregator (a budgeted `auto` one whose plan paid
    for none, `BudgetPlanner.aggregation`; one whose aggregation prompt overflows, `_aggregate`)
    where some answer gave no letter: the answers that did give one vote (the winning letter's
    heaviest voter's reply, as `lettered_vote`); with none, the best-ranked answer."""
    n = option_count(q.ask.text)
    lettered = [(a.expert, a.text) for a in answers if extract_choice(a.text, n) is not None]
    router = pool.router
    voted = lettered_vote(q.ask.text, lettered, q.decision.experts, router.reliability, router.option_prior
                          ) if lettered else None
    return voted or _best_ranked(q).text


def _best_ranked(q: _Query) -> Answer:
    return _ranked(q, [q.answers[j] for j in sorted(q.answers)])[0]


def _ranked(q: _Query, answers: Sequence[Answer]) -> list[Answer]:
    """The answers by the router's rank of their expert, best first (stable for repeats). The
    aggregator sees them in this order: the small models here lean on Response 1 (Qwen2.5-1.5B
    copied a wrong first response over two right ones), so the first should be the likeliest."""
    rank = {s.name: i for i, s in enumerate(q.decision.experts)}
    return sorted(answers, key=lambda a: rank.get(a.expert, len(rank)))
