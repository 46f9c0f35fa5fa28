"""Experts over their life: register (the model checked where it will run, stored, profiled in the
background), change, disable, enable and remove.

Every change is checked whole before anything is written, so a refused one changes nothing, and
the pool snapshot is rebuilt as soon as it is stored: routing follows at once. A changed persona
(system prompt or sampling: what its answers are) is profiled again as a new expert is: its old
profile, graded answers and lesson marks stop counting, and until the new profile is in it is
explored, never recruited. Removal is a soft delete: the row and all that names it (queries,
generations, lessons) stay readable, its name is never given to another expert (the history
that names it stays its own), and its model is unloaded from every worker where no remaining
expert runs on it.

No change waits on a worker while it holds the service's lock (a worker is held for each generate
chunk, many seconds of a profiling run): a model loads outside the lock and unloads on a thread of
its own when the worker is busy, so a refusal (a taken name, a bad field) and a removal answer at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from experts.backend import BackendError
from experts.types import ExpertSpec
from orchestrator.probe import NULL_PROBE, Probe
from orchestrator.scheduling.fleet import Fleet
from orchestrator.services.errors import Conflict, NotFound, Unprocessable
from orchestrator.services.expert_changes import ExpertChange, merged, next_status
from orchestrator.services.pool import AGGREGATOR_KEY, STALE_LESSONS_KEY, PoolState
from orchestrator.services.profiling import ProfilingService, Progress
from orchestrator.services.profiling_pending import PendingQueue, forget
from orchestrator.services.releases import Releases
from orchestrator.services.storing import InFlight
from orchestrator.store.db import Database
from orchestrator.store.models import Expert, spelled_id
from orchestrator.store.repositories.experts import ExpertRepository, NameTaken
from orchestrator.store.repositories.lessons import LessonRepository
from orchestrator.store.repositories.state import StateRepository
from orchestrator.store.repositories.validation import ValidationRepository

log = logging.getLogger(__name__)
DROPPED = ("failed", "removed")  # a profiling run's experts whose model it leaves unneeded
LOAD_TRIES = 3  # an update loads its model again when a concurrent change moved the expert meanwhile


@dataclass(frozen=True)
class _Plan:
    """A change checked whole against the stored expert: what it becomes and what that takes."""

    row: Expert
    old: ExpertSpec
    new: ExpertSpec
    persona: bool  # its system prompt or sampling changed: profiled again
    moved: bool  # to another worker or device: its model is loaded there first
    status: str
    profile: bool


class ExpertService:
    def __init__(self, db: Database, fleet: Fleet, pool: PoolState, profiler: ProfilingService,
                 probe: Probe = NULL_PROBE, batches: InFlight | None = None):
        self.db, self.fleet, self.pool, self.profiler, self.probe = db, fleet, pool, profiler, probe
        self.releases = Releases(db, fleet, pool, batches)  # models no expert runs on any more
        self.queue = PendingQueue(lambda ids: self.profile_now(ids, queued=True))
        self._lock = threading.RLock()  # one change at a time, each seeing the ones before it
        self._in_flight: set[int] = set()  # experts whose profiling run is under way

    def register(self, spec: ExpertSpec, profile: bool = True) -> Expert:
        """Check the name and the deployment, then load the model: a refusal of any of them
        stores nothing. The load runs outside the lock (it waits out the worker's generation)."""
        with self._lock:
            self._check_name(spec.name)
            self._check_context(spec)
            self.pool.deployment.check(spec)  # a worker and a device the deployment has
        self.check_loads(spec)
        try:
            row = self._add(spec, "profiling" if profile else "registered")
        except Exception:  # any refusal or failed insert: a 409 only had freed it, a store's 500 kept it loaded
            self._release(spec.base.key)  # loaded for nothing, unless another expert runs on it
            raise
        if profile:
            self.queue.submit([row.id])
        return row

    def _add(self, spec: ExpertSpec, status: str) -> Expert:
        """Store the expert, checked again: while the model loaded, another registration may have
        been stored with its name (here or by another service: the unique name decides), or over
        the same weights with another `n_ctx` (both were stored, over one loaded window)."""
        total = self.profiler.questions_stored() if status == "profiling" else 0  # shown from the start
        try:
            with self._lock:
                self._check_context(spec)
                with self.db.session() as s:
                    _check_name_free(ExpertRepository(s).by_name(spec.name), spec.name)
                    return ExpertRepository(s).add(spec, status=status, progress_total=total)
        except NameTaken as exc:
            self._check_name(spec.name)  # the same 409 as a name taken before
            raise Conflict(f"an expert named {spec.name!r} already exists", "name") from exc

    def _check_name(self, name: str) -> None:
        with self.db.session() as s:
            _check_name_free(ExpertRepository(s).by_name(name), name)

    def _check_context(self, spec: ExpertSpec) -> None:
        """Experts over the same weights share one loaded model, and so its context window: a
        second one asking for another `model.n_ctx` was checked against its own and run with the
        first's (a 512-token window serving prompts checked against 32,768). So is a removed
        expert's model whose unload still waits: the new expert would run on it and keep it."""
        with self.db.session() as s:
            rows = [r for r in ExpertRepository(s).list(profiles=False) if r.base_model_key == spec.base.key]
        held = [(r, ExpertSpec.model_validate(r.spec)) for r in rows if r.status != "removed" or self._unloading(r)]
        row, other = next(((r, p) for r, p in held if p.base.n_ctx != spec.base.n_ctx), (None, None))
        if row is None or other is None:
            return
        if row.status == "removed":
            raise Conflict(f"the weights of removed expert {other.name!r} are still loaded with model.n_ctx "
                           f"{other.base.n_ctx} until its profiling run or the batches using it end: try again "
                           "then", "model.n_ctx")
        raise Unprocessable(f"expert {spec.name!r} runs on the weights of {other.name!r}, loaded with model.n_ctx "
                            f"{other.base.n_ctx}: experts over one model share its context window, so give it "
                            "the same n_ctx", "model.n_ctx")

    def _unloading(self, row: Expert) -> bool:
        """Whether a removed expert's model waits to be unloaded (its run, a busy worker)."""
        with self._lock:
            return row.id in self._in_flight or self.releases.waiting(row.base_model_key)

    def check_loads(self, spec: ExpertSpec) -> None:
        """Load the model on the worker it will run on: a bad model is refused (422) there."""
        worker = self.fleet[self.pool.worker_for(spec)]
        try:
            worker.backend(spec.base).validate()
            worker.ensure_loaded(spec.base)
        except BackendError as exc:
            forget(worker, spec.base.key)
            raise Unprocessable(str(exc), "model.source") from exc
        except Exception as exc:  # llama.cpp raises ValueError for a GGUF it cannot load
            forget(worker, spec.base.key)
            raise Unprocessable(f"model failed to load: {exc}", "model.source") from exc

    def update(self, expert_id: int, change: ExpertChange, background: bool = True) -> tuple[Expert, bool]:
        """Apply the change whole or not at all. True with the row when the expert is profiled
        again (by the background queue, or by the caller's `profile_now` when not `background`)."""
        plan = self._apply_loaded(expert_id, change)
        if plan.moved:
            self._release(plan.old.base.key)  # on the worker it left, if nothing else runs on it there
        if plan.profile and background:
            self.queue.submit([expert_id])
        return self.get(expert_id), plan.profile

    def _apply_loaded(self, expert_id: int, change: ExpertChange) -> _Plan:
        """Check and store the change under the lock; a move first loads the model where it
        moves to, outside the lock, then checks again (the expert may have changed meanwhile)."""
        loaded: ExpertSpec | None = None
        for _ in range(LOAD_TRIES):
            with self._lock:
                plan = self._plan(expert_id, change)
                if not plan.moved or plan.new == loaded:
                    self._store(plan.row, plan.new, plan.status, plan.persona)
                    self.pool.refresh()  # placement planned again, routing as changed
                    return plan
            self.check_loads(plan.new)  # on the worker it moves to
            loaded = plan.new
        raise Conflict(f"expert {expert_id} kept changing while its model loaded; try again", "id")

    def _plan(self, expert_id: int, change: ExpertChange) -> _Plan:
        row = self._changeable(expert_id)
        old = ExpertSpec.model_validate(row.spec)
        new = merged(old, change.spec)
        persona = (old.system_prompt, old.sampling) != (new.system_prompt, new.sampling)
        if persona and expert_id in self._in_flight:
            raise Conflict(f"expert {row.name!r} is being profiled now; change its persona once that is done", "id")
        moved = new.placement != old.placement
        pending = expert_id in self._in_flight or self.queue.waiting(expert_id)  # its run still to end
        status, profile = next_status(row.status, row.accuracy is not None, change.enabled, persona, pending)
        # any status but failed is placed, and routed once enabled: enabled on a device the deployment lacks
        # (dropped from its devices file since), its queries were 500s, and those it joined failed whole
        if moved or status != "failed":
            self.pool.deployment.check(new)
        return _Plan(row, old, new, persona, moved, status, profile)

    def remove(self, expert_id: int) -> Expert:
        """Stop routing to the expert now and unload its model where nothing else needs it; its
        records stay. Removing a removed expert changes nothing."""
        with self._lock:
            row = self.get(expert_id)
            if row.status == "removed":
                return row
            with self.db.session() as s:
                ExpertRepository(s).set_lifecycle(expert_id, "removed")
                chosen = (StateRepository(s).get(AGGREGATOR_KEY) or {}).get("name") == row.name
            self.pool.refresh()
            self.probe.expert_removed(row.name)  # never routed again: its metrics' series go
            profiling = expert_id in self._in_flight  # its run would load the model again: it unloads it
        if not profiling:
            self._release(row.base_model_key)
        if chosen:  # pick the aggregator again among the rest, as after a profiling run
            self.queue.submit([])
        return self.get(expert_id)

    def revive(self, expert_id: int, disabled: bool = False) -> Expert:
        """Bring a removed expert back as it was: with its profile, or to be profiled if it never
        finished one; `disabled` when a user had disabled it before it was removed (their act
        outlives the removal). Reviving one that is not removed changes nothing."""
        with self._lock:
            row = self.get(expert_id)
            if row.status != "removed":
                return row
            status = "disabled" if disabled else "ready" if row.accuracy is not None else "registered"
            with self.db.session() as s:
                ExpertRepository(s).set_lifecycle(expert_id, status)
            self.pool.refresh()
        return self.get(expert_id)

    def all(self, profiles: bool = True) -> Sequence[Expert]:
        with self.db.session() as s:
            return ExpertRepository(s).list(profiles=profiles)

    def get(self, expert_id: int) -> Expert:
        with self.db.session() as s:
            row = ExpertRepository(s).get(expert_id)
        if row is None:
            raise NotFound(f"no expert with id {expert_id}", "id")
        return row

    def find(self, ref: str) -> Expert:
        """The expert named `ref`, else (no expert has that name) the one whose id `ref` spells.
        The name first: a name may be all digits, and reading "1" as id 1 changed or removed
        another expert than the one named."""
        row_id = spelled_id(ref)
        with self.db.session() as s:
            repo = ExpertRepository(s)
            row = repo.by_name(ref) or (repo.get(row_id) if row_id is not None else None)
        if row is None:
            raise NotFound(f"no expert named {ref!r}" + (f" nor with id {ref}" if row_id is not None else ""), "name")
        return row

    def pending_profiles(self) -> list[int]:
        """Experts stored but not yet profiled (a new pool, or a crash mid-profile), and ready
        ones profiled on another set than the pool's (its file's `validation:` changed since):
        their profiles describe other questions, and the router's memory needs their answers."""
        with self.db.session() as s:
            rows = ExpertRepository(s).list()
            ready = [r.id for r in rows if r.status == "ready"]
            current = ValidationRepository(s).answered(ready, self.pool.dataset) if ready else set()
        return [r.id for r in rows if r.status in ("registered", "profiling")
                or (r.status == "ready" and r.id not in current)]

    def profile_now(self, ids: Sequence[int], progress: Progress | None = None, queued: bool = False) -> None:
        """Profile these experts (those not removed meanwhile), choose the aggregator again and
        rebuild the pool snapshot; unload the models of those that failed or were removed meanwhile.
        One enabled again during the run after it ended for them (disabled, it failed) is queued again."""
        todo, ran = self._begin(ids, queued), False
        try:
            self._profile(todo, progress)
            self._choose_aggregator()
            ran = True
        finally:  # a run that raised queues nothing again: it would raise again, round and round
            with self._lock:
                self._in_flight.difference_update(e for e, _ in todo)
                again = self._still_profiling([e for e, _ in todo]) if ran else []
        if again:
            self.queue.submit(again)
        self.pool.refresh()
        self._release_dropped([e for e, _ in todo])

    def _profile(self, todo: Sequence[tuple[int, ExpertSpec]], progress: Progress | None) -> None:
        try:
            if todo:
                self.profiler.profile(todo, progress)
        except Exception as exc:
            log.exception("profiling failed")
            self._mark_failed([e for e, _ in todo], f"profiling failed: {exc}")

    def _choose_aggregator(self) -> None:
        """Its failure fails no expert: their profiles are stored, and the next run chooses again."""
        try:
            self.profiler.choose_aggregator()
        except Exception:
            log.exception("choosing the aggregator failed; the experts profiled stay as they are")

    def _release_dropped(self, ids: Sequence[int]) -> None:
        with self.db.session() as s:
            rows = [r for i in ids if (r := ExpertRepository(s).get(i)) is not None]
        for key in {r.base_model_key for r in rows if r.status in DROPPED}:
            self._release(key)

    def _still_profiling(self, ids: Sequence[int]) -> list[int]:
        """Those the run left unprofiled: enabled after it kept their outcome (disabled, it failed),
        or revived after it dropped them (removed)."""
        with contextlib.suppress(Exception), self.db.session() as s:  # unread: left to the next start
            return [i for i in ids if (r := ExpertRepository(s).get(i)) is not None
                    and r.status in ("profiling", "registered")]
        return []

    def _begin(self, ids: Sequence[int], queued: bool) -> list[tuple[int, ExpertSpec]]:
        """Read the specs to profile and mark them in flight, under the lock: a persona change
        lands either before (and is what gets profiled) or is refused until the run is done, and
        an expert enabled again finds it either waiting in the queue or in flight."""
        with self._lock:
            if queued:
                self.queue.taken(ids)
            with self.db.session() as s:
                repo = ExpertRepository(s)
                rows = [r for i in ids if (r := repo.get(i)) is not None and r.status != "removed"]
                for r in rows:
                    repo.set_status(r.id, "profiling")
                self._in_flight.update(r.id for r in rows)
                return [(r.id, ExpertSpec.model_validate(r.spec)) for r in rows]

    def _changeable(self, expert_id: int) -> Expert:
        row = self.get(expert_id)
        if row.status == "removed":
            raise Conflict(f"expert {expert_id} ({row.name!r}) was removed; a removed expert cannot be changed", "id")
        return row

    def _store(self, row: Expert, spec: ExpertSpec, status: str, persona: bool) -> None:
        total = self.profiler.questions_stored() if persona else 0
        with self.db.session() as s:
            repo = ExpertRepository(s)
            repo.set_spec(row.id, spec)
            if persona:
                repo.reset_profile(row.id, total)
                _forget_persona(StateRepository(s), LessonRepository(s).last_id(), row.name)
            if status != row.status:
                repo.set_lifecycle(row.id, status)

    def _release(self, key: str) -> None:
        """Unload a base model from every worker where no remaining expert over it runs (a
        disabled expert still counts: it stays loaded, ready to be enabled); never waits (`releases`)."""
        self.releases.release(key)

    def _mark_failed(self, ids: Sequence[int], error: str) -> None:
        """A run that raised fails its experts, save those it had already stored ready."""
        with self.db.session() as s:
            repo = ExpertRepository(s)
            for eid in ids:
                if (row := repo.get(eid)) is not None and row.status != "ready":
                    repo.set_status(eid, "failed", error)


def _check_name_free(row: Expert | None, name: str) -> None:
    if row is None:
        return
    if row.status == "removed":
        raise Conflict(f"the name {name!r} belonged to expert {row.id}, removed; a name is never reused, so the "
                       "queries, generations and lessons that name it stay its own: choose another name", "name")
    raise Conflict(f"an expert named {name!r} already exists", "name")


def _forget_persona(state: StateRepository, last_lesson: int, name: str) -> None:
    """What judged the old persona stops counting: its marks in the lessons so far, and its
    score as an aggregator (it is benchmarked again after its new profile)."""
    state.put(STALE_LESSONS_KEY, {**(state.get(STALE_LESSONS_KEY) or {}), name: last_lesson})
    chosen = state.get(AGGREGATOR_KEY)
    if chosen:
        scores = {n: v for n, v in chosen.get("accuracy", {}).items() if n != name}
        state.put(AGGREGATOR_KEY, {"name": None if chosen.get("name") == name else chosen.get("name"),
                                   "accuracy": scores})

