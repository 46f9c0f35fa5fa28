"""Idempotency keys: a POST sent again with the same `Idempotency-Key` returns what the first
one created (its queries, or its batch) instead of creating it again.

A key is scoped to the caller (its API key; anonymous callers share one scope) and is stored in
the same transaction as the queries or batch it names, so a crash never keeps one without the
other: a client that lost its connection retries, after a restart too, and learns the ids of
what was accepted. The same key with another body, or on another endpoint, is a 422 naming the
conflict, and nothing is stored. Two first requests racing on one key: the unique constraint
lets one commit; the other rolls back (its queries unstored) and returns the winner's result.
Keys older than the retention window are forgotten: purged at most once a minute, when a new
key is stored, so the table holds about one window of traffic.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from orchestrator.services.errors import Conflict, Unprocessable
from orchestrator.store.db import Database
from orchestrator.store.models import IdempotencyKey
from orchestrator.store.repositories.idempotency import IdempotencyRepository, KeyTaken

HEADER = "Idempotency-Key"
PURGE_EVERY_S = 60.0
KEY_STRIPES = 64  # locks requests under one key take turns on (`once`); bounded, whatever the keys
T = TypeVar("T")


class KeyReused(Unprocessable):
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class Claim:
    """A request under an idempotency key: who sent it, the key, where to, and its body's hash."""

    scope: str
    key: str
    endpoint: str
    fingerprint: str

    def row(self, query_ids: Sequence[int] | None = None, batch_id: int | None = None) -> IdempotencyKey:
        return IdempotencyKey(scope=self.scope, key=self.key, endpoint=self.endpoint, fingerprint=self.fingerprint,
                              query_ids=list(query_ids) if query_ids is not None else None, batch_id=batch_id)


@dataclass(frozen=True)
class Prior:
    """What the first request under the key created."""

    query_ids: list[int]
    batch_id: int | None = None


# a body's class may name its fields that choose only how the reply is delivered (a stream or
# one JSON reply): a client whose stream broke and that retries unstreamed asks the same query
TRANSPORT_FIELDS = "transport_fields"


def scope_of(owner: int | None) -> str:
    """Whose keys a caller's are (`Caller.owner`): its key's (the env admin key's `key:-1`), or
    the one scope every caller without a key shares."""
    return "anonymous" if owner is None else f"key:{owner}"


def fingerprint(body: object) -> str:
    """The body as canonical JSON, hashed: the same request however its JSON was spaced or ordered.
    A field at its default is left out, so `"stream": false` and no `stream` are one request, and
    a field a later version adds (at its default) does not make a retry across the upgrade a
    different body (it did: the whole model was dumped, defaults and all). A list body's items
    (POST /v1/queries with [...]) are left out the same way; they were dumped whole, so a list's
    fingerprint stored before this changed once, as a streamed chat's did when `TRANSPORT_FIELDS` came."""
    text = json.dumps(to_jsonable_python(_without_defaults(body)), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _without_defaults(body: object) -> object:
    if isinstance(body, BaseModel):  # how the reply is sent is not what was asked (`TRANSPORT_FIELDS`)
        return body.model_dump(mode="json", exclude_defaults=True, exclude=getattr(body, TRANSPORT_FIELDS, None))
    if isinstance(body, list | tuple):
        return [_without_defaults(item) for item in body]
    return body


class IdempotencyService:
    def __init__(self, db: Database, retention_s: float):
        self.db, self.retention = db, timedelta(seconds=retention_s)
        self._lock, self._purged_at = threading.Lock(), float("-inf")
        self._keys = [threading.Lock() for _ in range(KEY_STRIPES)]

    def once(self, claim: Claim | None, create: Callable[[Claim | None], T]) -> T | Prior:
        """`create(claim)` (which stores the claim with what it creates), unless the key was
        used before: then the first request's result. No key: just `create(None)`.

        Requests under one key take turns in this process: racing, the second looked the key up
        before the first stored it and then met what the first's creation held (the backlog's
        room: a 503 for a key whose queries were accepted). Across replicas the unique key
        decides (`KeyTaken`)."""
        if claim is None:
            return create(None)
        with self._keys[hash((claim.scope, claim.key)) % KEY_STRIPES]:
            return self._first(claim, create)

    def _first(self, claim: Claim, create: Callable[[Claim | None], T]) -> T | Prior:
        if (prior := self.prior(claim)) is not None:
            return prior
        self._purge_now_and_then()
        try:
            return create(claim)
        except KeyTaken:  # a concurrent first request with this key committed first
            if (prior := self.prior(claim)) is None:
                raise Conflict(f"the {HEADER} {claim.key!r} was in use a moment ago; send it again", HEADER) from None
            return prior

    def prior(self, claim: Claim) -> Prior | None:
        """The first request's result under the key (None if new or expired); 422 if the key
        came with another body or to another endpoint."""
        with self.db.session() as s:
            repo = IdempotencyRepository(s)
            row = repo.get(claim.scope, claim.key)
            if row is None:
                return None
            if row.created_at < datetime.now(UTC) - self.retention:
                repo.delete(row.id)  # past the window: the key is free again
                return None
            _check_same(row, claim)
            return Prior(list(row.query_ids or []), row.batch_id)

    def purge(self) -> int:
        """Forget keys older than the retention window; returns how many."""
        with self.db.session() as s:
            return IdempotencyRepository(s).purge(datetime.now(UTC) - self.retention)

    def _purge_now_and_then(self) -> None:
        with self._lock:
            if time.monotonic() - self._purged_at < PURGE_EVERY_S:
                return
            self._purged_at = time.monotonic()
        self.purge()


def _check_same(row: IdempotencyKey, claim: Claim) -> None:
    if row.endpoint != claim.endpoint:
        raise KeyReused(f"the {HEADER} {claim.key!r} was first sent to {row.endpoint}, not {claim.endpoint}; "
                        "use a new key for a new request", HEADER)
    if row.fingerprint != claim.fingerprint:
        raise KeyReused(f"the {HEADER} {claim.key!r} was first sent with a different body; "
                        "use a new key for a new request", HEADER)
