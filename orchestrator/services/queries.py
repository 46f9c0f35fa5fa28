"""Answering admitted queries: the batching window, storing outcomes, recovery, reading back.

Concurrent requests share one window, so their generation is batched by model too. A query is
answered exactly as it was admitted: its stored request and decision are what runs, here and
after a crash (`recover`). Each query is stored as soon as it is done (`storing`), and a request
whose queries are all stored is answered then, not when its batch's longest query is. What a
batch taught the router is learned behind it (`LearningQueue`), once the batch is done: no reply
waits for the router to be rebuilt or refitted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import replace
from functools import partial

from experts.cost_model import approx_tokens
from experts.types import storable
from orchestrator.domain import Ask, Decision, Outcome, QueryError
from orchestrator.pipeline import Finished, Pipeline, PoolSnapshot
from orchestrator.probe import NULL_PROBE, Probe
from orchestrator.routing.learning import Lesson
from orchestrator.scheduling.window import BatchingWindow, Release, Releasing
from orchestrator.services.admission import Admission, Admitted
from orchestrator.services.backlog import Backlog, Hold, key_of
from orchestrator.services.errors import NotFound
from orchestrator.services.idempotency import Claim
from orchestrator.services.instances import Instance
from orchestrator.services.learning_queue import LearningQueue
from orchestrator.services.pool import PoolState
from orchestrator.services.storing import Early, EarlyStore, InFlight
from orchestrator.settings import BatchingSettings
from orchestrator.store.db import Database
from orchestrator.store.models import Query
from orchestrator.store.repositories.queries import QueryRepository, ask_of, decision_of
from skills.question_text import question_part

log = logging.getLogger(__name__)
Taught = list[tuple[int | None, Lesson]]  # a batch's lessons, by the id of the query that taught each
ADOPT_AT_ONCE = 500  # queries one heartbeat takes over from dead services (the rest: the next beats)


class QueryService:
    def __init__(self, db: Database, pool: PoolState, pipeline: Pipeline, admission: Admission,
                 batching: BatchingSettings, instance: Instance, probe: Probe = NULL_PROBE):
        self.db, self.pool, self.pipeline, self.admission, self.probe = db, pool, pipeline, admission, probe
        self.instance = instance  # this service: the owner of what it admits, and who is alive
        weigh = partial(predicted_tokens, most=pipeline.limits.expert_max_tokens)
        self.storer = EarlyStore(self._store, self.get_many)  # before the window: its batches store through it
        self.window: BatchingWindow[Admitted, Query] = BatchingWindow(
            Releasing(self._run_items), batching.max_batch, batching.wait_ms / 1000, probe=probe, weigh=weigh,
            max_work=batching.max_batch_tokens, lanes=self._workers)
        pool.moved = self.window.reread  # a query waiting for a busy worker may find its expert moved to a free one
        self.backlog = Backlog(self.window, batching.max_waiting)
        self.learner: LearningQueue[Taught] = LearningQueue(self._learn)
        self.running = InFlight()  # batches whose lessons are not handed to the learner yet

    def _workers(self, item: Admitted) -> frozenset[str]:
        """The item's lanes in the window: batches on other workers run beside its batch."""
        return self.pool.snapshot.workers_of(item.decision, self.pipeline.fleet.default)

    def submit(self, asks: Sequence[Ask], claim: Claim | None = None) -> Future[list[Query]]:
        """Admit the queries (a 4xx, nothing stored, if one cannot be taken) and queue them; the
        future resolves to their stored rows once they are answered or failed. A `claim` (idempotency
        key) is stored with them; KeyTaken, nothing stored, if another request stored it first."""
        return self.start(asks, claim)[1]

    def start(self, asks: Sequence[Ask], claim: Claim | None = None) -> tuple[list[Admitted], Future[list[Query]]]:
        """`submit`, keeping the admitted queries (their ids and decisions) beside the future."""
        with self.backlog.room(len(asks), key_of(asks)) as hold:
            items = self.admission.admit(asks, claim)
            done = self.window.submit(items)
            hold.until([(len(items), done)])
            return items, done

    def room(self, n: int, key: int | None = None) -> AbstractContextManager[Hold]:
        """Room in the backlog for `n` more queries, held while they are admitted and queued, and
        `key`'s share until they are answered (`Backlog.room`); Busy (503) or RateLimited (429),
        nothing stored, if there is none."""
        return self.backlog.room(n, key)

    def waiting(self) -> int:
        """Queries accepted and not yet taken into a batch: in the window, in chunks not fed to it
        yet, or being admitted."""
        return self.backlog.waiting()

    def ask(self, asks: Sequence[Ask]) -> list[Query]:
        """`submit` and wait: the CLI's and the tests' way in."""
        return self.submit(asks).result()

    def learned(self) -> None:
        """Wait until the router has learned what every batch answered so far taught: a batch
        whose rows came back may still be running, its lessons handed over only at its end."""
        self.running.wait()
        self.learner.learned()

    def close(self) -> None:
        """Stop the window and the storer, then learn what its batches taught (before the pool and store go).
        A batch outliving the window's bounded wait stores its queries itself at its end (`EarlyStore.put`)."""
        self.window.close()
        self.storer.close()
        self.learner.close()

    def _run_items(self, items: list[Admitted], release: Release[Query]) -> list[Query]:
        """The batch's rows as stored: those it finished as they were written, the few it
        failed before running (an expert gone) read back."""
        rows = self.run(items, release)
        rows.update((q.id, q) for q in self.get_many([i.query_id for i in items if i.query_id not in rows]))
        return [rows[i.query_id] for i in items]

    def run(self, items: Sequence[Admitted], release: Release[Query] | None = None) -> dict[int, Query]:
        """Answer one batch as admitted, storing everything it produced: each query as soon as it
        is done, its row then handed to `release` with its place in `items`, what is left at
        the end. Returns the rows it finished, by id."""
        batch = self.running.begin()
        try:
            return self._run(items, release)
        finally:
            self.running.end(batch)

    def _run(self, items: Sequence[Admitted], release: Release[Query] | None) -> dict[int, Query]:
        snapshot = self.pool.snapshot
        present = snapshot.experts.keys()
        places = [n for n, i in enumerate(items) if set(i.decision.recruited) <= present]
        runnable = [self._without_gone_competitors(items[n], present) for n in places]
        gone = [i.query_id for i in items if not set(i.decision.recruited) <= present]
        if gone:  # recovered after its expert left the pool: it fails alone
            self._fail(gone, "an expert this query was routed to is no longer in the pool")
        if not runnable:
            return {}
        taught: Taught = []
        early = Early(release)
        outcomes = self._answer(snapshot, runnable, places, taught, early)
        left = [(i.query_id, i.ask, out) for i, out in zip(runnable, outcomes, strict=True)
                if i.query_id not in early.settled]  # none, unless the storer could not store at all or had closed
        rows = early.rows | (self._store(left) if left else {})
        if taught:  # learned behind the window: the batch's clients do not wait for a rebuild or refit
            self.learner.submit(taught)
        self._count(rows.values())
        return rows

    def _without_gone_competitors(self, item: Admitted, present: Collection[str]) -> Admitted:
        """A competitor removed since admission only drops out of the competition (it answers
        only to be scored); the query still runs. With none left there is no competition: it
        said `competition: true` with no competitor, and the slot it took of the cap (in this
        process: admitted here, its embedding in hand) is given back."""
        kept = [n for n in item.decision.competitors if n in present]
        if len(kept) == len(item.decision.competitors):
            return item
        if not kept and item.embedding is not None:
            self.pipeline.decider.release([item.decision])
        update = {"competitors": kept, "competition": item.decision.competition and bool(kept)}
        return replace(item, decision=item.decision.model_copy(update=update))

    def _answer(self, snapshot: PoolSnapshot, runnable: Sequence[Admitted], places: Sequence[int], taught: Taught,
                early: Early) -> list[Outcome]:
        """The batch's outcomes, once every query handed to the storer is stored. If the pipeline
        raises, those of its queries not stored yet are stored failed, naming the error."""
        finished: Finished = partial(self._finished, runnable, places, early)
        try:
            outcomes = self.pipeline.answer(snapshot, [i.ask for i in runnable], [i.decision for i in runnable],
                                            [i.embedding for i in runnable], finished=finished,
                                            learn=lambda at, lesson: taught.append((runnable[at].query_id, lesson)))
        except Exception as exc:
            self.storer.drain(early)  # first: a query stored done keeps its answer (`_fail` leaves it)
            self._fail([i.query_id for i in runnable], f"{type(exc).__name__}: {exc}")
            self._raised(early, taught)
            raise
        self.storer.drain(early)
        return outcomes

    def _raised(self, early: Early, taught: Taught) -> None:
        """After a batch raised: count its queries stored before it did, which nothing else counts
        (`_fail` leaves them), and hand over the lessons taught for them before the raise."""
        self._count(early.rows.values())
        kept: Taught = [(qid, lesson) for qid, lesson in taught if qid in early.rows]
        if kept:
            self.learner.submit(kept)
        log.warning("a batch raised after storing %d queries: %d lessons handed to the learner, any others it "
                    "would have taught are lost", len(early.rows), len(kept))

    def _finished(self, runnable: Sequence[Admitted], places: Sequence[int], early: Early, at: int,
                  outcome: Outcome) -> None:
        """Hand a query done before its batch to the storer (on a device thread: it must not wait)."""
        item = runnable[at]
        self.storer.put((item.query_id, item.ask, outcome), early, places[at])

    def _count(self, stored: Iterable[Query]) -> None:
        """Count what the batch stored, by status. An answer the store refused is counted by
        `_fail`, which stored it failed; one it dropped (the query finished elsewhere) is not
        counted again."""
        statuses = Counter(q.status for q in stored)
        for status in ("done", "failed"):
            if statuses[status]:
                self.probe.queries_finished(status, statuses[status])

    def _store(self, finished: Sequence[tuple[int, Ask, Outcome]]) -> dict[int, Query]:
        """Store the answered queries together; if that fails (a lock timeout, a dropped
        connection, a value the driver cannot take), each alone, and one that still cannot be
        stored is stored as failed, naming why: left `accepted`, its client would wait until a
        restart recovered it. A store that takes nothing at all raises, and the next start
        recovers the batch."""
        try:
            with self.db.session() as s:
                return {r.id: r for r in QueryRepository(s).finish_many(finished)}
        except Exception:  # not only SQLAlchemyError: the driver raises its own (UnicodeEncodeError, OverflowError)
            log.exception("storing %d answered queries together failed; storing each alone", len(finished))
        rows: dict[int, Query] = {}
        for item in finished:
            try:
                with self.db.session() as s:
                    rows.update((r.id, r) for r in QueryRepository(s).finish_many([item]))
            except Exception as exc:  # its error text is made storable: it names what the store refused
                self._fail([item[0]], storable(f"its answer could not be stored: {type(exc).__name__}: {exc}")[:2000])
        return rows

    def _learn(self, taught: Taught) -> None:
        """Teach the router (on the learner's thread); the queries are stored already, so a
        failure here loses this batch's lessons only."""
        try:
            stored = self.pool.learn(taught)
        except Exception:
            log.exception("learning from %d answered queries failed; they are stored", len(taught))
            return
        # not one its query's feedback overtook
        self.probe.learned([lesson.source for (_, lesson), s in zip(taught, stored, strict=True) if s.id is not None])

    def _fail(self, ids: Sequence[int], error: str) -> None:
        """Fail those of these queries still accepted, counting only those the write changed: one
        finished meanwhile (another replica answered it) keeps its outcome and was counted where it ended."""
        with self.db.session() as s:
            repo = QueryRepository(s)
            failed = sum(repo.fail(qid, error) for qid in ids)
        if failed:
            self.probe.queries_finished("failed", failed)

    def get(self, query_id: int, reader: int | None = None) -> Query:
        """The stored query; with `reader` (a client key), only one it asked or nobody's."""
        with self.db.session() as s:
            row = QueryRepository(s).get(query_id)
        if row is None or not readable(row, reader):
            raise NotFound(f"no query with id {query_id}", "id")
        return row

    def get_many(self, ids: Sequence[int]) -> list[Query]:
        if not ids:
            return []
        with self.db.session() as s:
            return QueryRepository(s).get_many(ids)

    def watermark(self) -> int:
        """The newest query id now: a start takes what is pending up to it as left by the last
        run (queries admitted after it are live traffic, already in the window)."""
        with self.db.session() as s:
            return QueryRepository(s).last_id()

    def pending_count(self, through: int | None = None) -> int:
        """Accepted queries (up to `through`) this service would recover: not a live one's."""
        live = self.instance.live()
        with self.db.session() as s:
            return QueryRepository(s).pending_count(through, self.instance.id, live)

    def recover(self, through: int | None = None, left: Callable[[int], None] | None = None) -> int:
        """Answer queries that were accepted but never finished (a crash mid-batch), each as it
        was admitted: its stored request and decision (rows from before decisions were stored
        at admission are routed again, with their stored seed). `through`: only ids up to it.

        They go to the window in window-sized chunks, as a batch's do, so live queries share the
        device between them; `left(n)` hears how many are still unanswered. A query that cannot
        be read back or routed again, or whose expert left the pool, fails alone (stored as
        failed with its error). Only queries this service may take are answered: its own, and
        those never owned or owned by a dead service (services/instances.py), which it takes over;
        a live service's are left to it. Returns how many it took."""
        live, me = self.instance.live(), self.instance.id
        with self.db.session() as s:
            repo = QueryRepository(s)
            repo.claim(me, live, repo.last_id() if through is None else through)
        with self.db.session() as s:
            taken, items = self._restore(QueryRepository(s).pending(through, owner=me))
        self._answer_in_chunks(items, left or (lambda _: None))
        return taken

    def adopt(self) -> list[Future[list[Query]]]:
        """Take over the accepted queries of services that died while this one runs (at most
        ADOPT_AT_ONCE, oldest first) and queue them; the futures of their chunks, not waited
        for: the heartbeat calls this, and a heartbeat held up would make this one look dead."""
        live, me = self.instance.live(), self.instance.id
        with self.db.session() as s:
            ids = QueryRepository(s).adopt(me, live, ADOPT_AT_ONCE)
        if not ids:
            return []
        log.warning("taking over %d queries of services that stopped", len(ids))
        try:
            return [done for _, done in self.queue(self._restore(self.get_many(ids))[1], "queries taken over")]
        except Exception:  # claimed by a live service, no one would take them until it dies: give them back
            with self.db.session() as s:
                QueryRepository(s).release(me, ids)
            raise

    def queue(self, items: Sequence[Admitted], what: str) -> list[tuple[int, Future[list[Query]]]]:
        """Queue admitted queries in window-sized chunks, fed one at a time (`Backlog.queue`)."""
        return self.backlog.queue(items, what)

    def _restore(self, rows: Sequence[Query]) -> tuple[int, list[Admitted]]:
        """How many rows, and the ones that can be asked again as admitted; one that cannot be
        read back or routed again is stored as failed, naming why."""
        read = [(q.id, _read_back(q)) for q in rows]
        for qid, error in [(qid, r) for qid, r in read if isinstance(r, str)]:
            self._fail([qid], error)
        items = [self._restored(qid, *r) for qid, r in read if not isinstance(r, str)]
        return len(read), self._embedded([i for i in items if i is not None])

    def _embedded(self, items: list[Admitted]) -> list[Admitted]:
        """Restored competitions and explorations with their question's embedding, as admission
        embeds it: not stored, and their lesson needs it (without, every expert ran and nothing was
        learned). Only they are embedded, so recovering plain queries stays cheap."""
        scored = [n for n, i in enumerate(items) if i.decision.competitors and i.embedding is None]
        if not scored:
            return items
        try:
            vectors = self.pipeline.embedder.encode([question_part(items[n].ask.text) for n in scored])
        except Exception:  # their lessons are lost; the queries are still answered
            log.exception("embedding %d recovered competitions failed: they will teach nothing", len(scored))
            return items
        for n, vector in zip(scored, vectors, strict=True):
            items[n] = replace(items[n], embedding=vector)
        return items

    def _restored(self, query_id: int, ask: Ask, decision: Decision | None) -> Admitted | None:
        return Admitted(query_id, ask, decision) if decision is not None else self._reroute(query_id, ask)

    def _answer_in_chunks(self, items: list[Admitted], left: Callable[[int], None]) -> None:
        remaining = len(items)
        left(remaining)
        for size, done in self.queue(items, "recovered queries"):  # fed one by one, awaited in order
            done.exception()  # waits; a failure is logged by `queue`
            remaining -= size
            left(remaining)

    def _reroute(self, query_id: int, ask: Ask) -> Admitted | None:
        try:
            return Admitted(query_id, ask, self.pipeline.route(self.pool.snapshot, [ask])[0])
        except QueryError as exc:
            self._fail([query_id], exc.message)
            return None


def readable(row: Query, reader: int | None) -> bool:
    """Whether the client key `reader` (None: an admin, or open mode) may see the query."""
    return reader is None or (row.request or {}).get("key_id") in (None, reader)


def predicted_tokens(item: Admitted, most: int) -> float:
    """A query's predicted work, what bounds a window's batch: its prompt (~4/3 tokens a word)
    and the most each answering expert may write, once per expert that answers it."""
    prompt = approx_tokens(item.ask.text)
    out = min(item.ask.max_tokens or most, most)
    return (prompt + out) * max(1, len(item.decision.recruited) + len(item.decision.competitors))


def _read_back(row: Query) -> tuple[Ask, Decision | None] | str:
    """The stored request and decision, or why they cannot be read (the query then fails alone)."""
    try:
        return ask_of(row), decision_of(row)
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        return f"could not be read back to answer after a restart: {exc}"
