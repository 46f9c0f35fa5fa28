"""A start serves what its pool file says, over whatever the data directory already holds.

The database outlives the pool file: a data directory made by an earlier file (or an earlier
release's packaged pool) still holds that file's experts. Each start therefore brings the stored
experts in line with the file: an expert new to it is registered; one whose persona, sampling,
placement or timeout changed in it since the last start is changed as `PATCH /v1/experts/{id}`
would (a persona change is profiled again), while what the API or the CLI changed since and the
file did not stays; one an earlier start took from the file and the file no longer names is
removed (its records stay, as after `DELETE`), and comes back, profile and all (disabled, if a
user had disabled it), if the file names it again: switching a data directory between two pool
files works both ways. One of the file's experts removed over the API stays removed (the user's
act outlives the file). Experts registered over the API are not the file's and stay. What each
start took from the file is kept in the state table; a data directory from before that record
cannot tell the file's old experts from the API's, so they are kept and logged.

An expert whose base model changed under the same name is refused with the start: a name is
never reused, so the stored queries and lessons that name it stay that model's. So is one the
service refuses (a model that will not load, a worker or device the deployment lacks: checked at
every start, as a devices file may drop one the file still names), named as the file's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from experts.types import ExpertSpec
from orchestrator.services.errors import ServiceError
from orchestrator.services.expert_changes import CHANGEABLE, MERGED, ExpertChange
from orchestrator.services.experts import ExpertService
from orchestrator.store.db import Database
from orchestrator.store.models import Expert
from orchestrator.store.repositories.state import StateRepository

log = logging.getLogger(__name__)

# state: {"experts": the file's names at the last start, "retired": those it removed, "disabled": those of
# them a user had disabled, so they come back disabled, "specs": each of them as the file gave it (JSON), so a
# start applies what changed in the file, not the file over a PATCH}
POOL_FILE_KEY = "pool_file"


class PoolFileConflict(RuntimeError):
    """The pool file asks for what cannot be: a stored expert's name over another base model, or
    an expert the service refuses (a 409 or 422 over the API: a model that will not load, a
    context window unlike its peers', a worker the deployment lacks)."""


@contextmanager
def _refused(name: str) -> Iterator[None]:
    """The service's refusal of one of the file's experts, as the file's: named, and one line
    with exit 2 from the CLI (`cli_failures`), not a service error's traceback."""
    try:
        yield
    except ServiceError as exc:
        raise PoolFileConflict(f"the pool file's expert {name!r} was refused: {exc.message}") from exc


@dataclass(frozen=True)
class Synced:
    """What a start did to match its pool file (names)."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    kept: list[str]  # stored, not the file's, and not known to be an earlier file's
    deleted: list[str]  # the file's, removed over the API: they stay removed


def sync_pool_file(experts: ExpertService, db: Database, specs: Sequence[ExpertSpec]) -> Synced:
    """Register, change and remove stored experts so that the pool file's are what is served.
    A refused expert stops the start, naming it; what was stored before it stays, and the next
    start (the file fixed) takes it as it is."""
    rows = {r.name: r for r in experts.all()}
    with db.session() as s:
        state = StateRepository(s).get(POOL_FILE_KEY) or {}
    earlier, retired, disabled = (set(state.get(k, [])) for k in ("experts", "retired", "disabled"))
    last: dict[str, dict[str, Any]] = state.get("specs", {})
    deleted = {n for n, r in rows.items() if r.status == "removed" and n not in retired}  # over the API
    changes = {s.name: spec_changes(rows[s.name], s, last.get(s.name))
               for s in specs if s.name in rows and s.name not in deleted}
    for spec in (s for s in specs if s.name in changes and not changes[s.name]):
        with _refused(spec.name):  # unchanged, nothing else checks it against this deployment
            experts.pool.deployment.check(spec)
    named = {s.name for s in specs}
    added = [_register(experts, db, s) for s in specs if s.name not in rows]
    for name in (n for n in changes if rows[n].status == "removed"):
        experts.revive(rows[name].id, name in disabled)  # an earlier file's expert, back with its profile
    changed = [n for n, c in changes.items() if c]
    for name in changed:
        with _refused(name):
            experts.update(rows[name].id, ExpertChange(changes[name]), background=False)  # the start profiles it
    live = {n for n, r in rows.items() if r.status != "removed" and n not in named}
    removed = [experts.remove(rows[n].id).name for n in sorted(live & earlier)]
    held = (disabled - named) | {n for n in removed if rows[n].status == "disabled"}
    gone = (retired - named) | set(removed)  # their file specs stay, for when the file names them again
    _record(db, named, gone, held, {**{n: last[n] for n in gone if n in last}, **{s.name: _dump(s) for s in specs}})
    synced = Synced(added, changed, removed, sorted(live - earlier), sorted(named & deleted))
    _report(synced)
    return synced


def _register(experts: ExpertService, db: Database, spec: ExpertSpec) -> str:
    """Registered and at once recorded as the file's: a start refused on a later expert (or
    killed) left it untracked, kept as if registered over the API once the file dropped it."""
    with _refused(spec.name):
        name = experts.register(spec, profile=False).name
    with db.session() as s:
        repo = StateRepository(s)
        state = repo.get(POOL_FILE_KEY) or {}
        specs = {**state.get("specs", {}), name: _dump(spec)}
        repo.put(POOL_FILE_KEY, {**state, "experts": sorted({*state.get("experts", []), name}), "specs": specs})
    return name


def _record(db: Database, named: set[str], retired: set[str], disabled: set[str],
            specs: dict[str, dict[str, Any]]) -> None:
    with db.session() as s:
        StateRepository(s).put(POOL_FILE_KEY, {"experts": sorted(named), "retired": sorted(retired),
                                               "disabled": sorted(disabled), "specs": specs})


def _dump(spec: ExpertSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")


def spec_changes(row: Expert, spec: ExpertSpec, last: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the file changed since the last start (`last`: the file's spec then), as a PATCH of
    the stored expert; a conflict when the file's base model is not the stored one's."""
    old, new = ExpertSpec.model_validate(row.spec).model_dump(mode="json"), _dump(spec)
    fixed = sorted(k for k in old if k not in CHANGEABLE and old[k] != new[k])
    if fixed:
        raise PoolFileConflict(
            f"the pool file's expert {spec.name!r} has another {', '.join(fixed)} than the one stored under that "
            "name; a name is never reused, so the queries that name it stay that model's: rename it in the file, "
            "or start on a new data directory (SKILLROUTE_DATA_DIR)")
    # no spec of the last start (a state from before starts recorded them, or a name new to the file):
    # the stored expert stands in for it, as before, so the file's values are applied over it
    return _edits(old if last is None else last, new, old)


def _edits(was: dict[str, Any], new: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """The file's values unlike the last start's (changed in the file) and unlike the stored ones
    (a start refused midway may have applied them); what the API or the CLI changed since, the file
    did not, stays. Of `sampling` and `placement`, only those keys, as a PATCH names them."""
    edits: dict[str, Any] = {}
    for k in CHANGEABLE:
        if k in MERGED:
            keys = {j: v for j, v in new[k].items() if v != (was.get(k) or {}).get(j) and v != stored[k].get(j)}
            if keys:
                edits[k] = keys
        elif new[k] != was.get(k) and new[k] != stored[k]:
            edits[k] = new[k]
    return edits


def _report(synced: Synced) -> None:
    for verb, names in [("registered", synced.added), ("changed", synced.changed), ("removed", synced.removed)]:
        if names:
            log.info("pool file: %s %s", verb, ", ".join(names))
    if synced.kept:
        log.info("pool file: kept %s, stored but not in the file (registered over the API, or by a pool file "
                 "from before starts recorded theirs); DELETE /v1/experts/{id} removes one", ", ".join(synced.kept))
    if synced.deleted:
        log.info("pool file: %s stay removed (removed over the API)", ", ".join(synced.deleted))
