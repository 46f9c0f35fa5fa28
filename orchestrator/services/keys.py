"""API keys and access: admin keys guard pool changes, client keys (optional) guard queries.

A key is `sk-sr-<prefix>.<secret>`: the prefix finds the stored row, the secret is checked
against its salted scrypt hash. With no admin key configured (env or store) the service stays
open, as it always was for local use; once one exists, admin writes need it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from orchestrator.services.errors import Forbidden, NotFound, RateLimited, ServiceError, Unauthorized
from orchestrator.settings import AuthSettings
from orchestrator.store.db import Database
from orchestrator.store.models import INTEGER_MAX, KEY_NAME_CHARS, ApiKey
from orchestrator.store.repositories.keys import KeyRepository
from orchestrator.store.repositories.rate_limits import RateLimitRepository

Role = Literal["admin", "client"]
KEY_PREFIX = "sk-sr-"
# What `create` issues: 12 hex digits, then a URL-safe secret; printable ASCII up to a bound. A
# token of another shape is no key, and is not looked up (a NUL is a PostgreSQL error, not a miss).
KEY_SHAPE = re.compile(r"sk-sr-[0-9a-f]{12}\.[\x21-\x7e]{1,256}")
# scrypt's standard interactive cost; a verified key is cached, so each key pays it once per process
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
# The owner the env admin key's queries are stamped with: it is no stored key, so it has no row id,
# and stamped with none its queries and batches were anonymous ones, readable by every caller.
# Row ids start at 1 and 0 reads as "anonymous only" (api/deps.py), so -1 is nobody else's.
ENV_ADMIN = -1


@dataclass(frozen=True)
class Caller:
    """Who made a request: a stored key (id set), the env admin key (`env_admin`), or nobody."""

    role: Role | None
    key_id: int | None = None
    env_admin: bool = False

    @property
    def owner(self) -> int | None:
        """Whose what it asks is: its stored key's id, ENV_ADMIN, or None (anonymous: anyone's to read)."""
        return ENV_ADMIN if self.env_admin else self.key_id


@dataclass(frozen=True)
class KeyBudget:
    """Default budgets of a key's queries: latency in ms, energy in J; None is no limit."""

    latency_ms: float | None = None
    energy_j: float | None = None

    def checked(self) -> KeyBudget:
        for name, value in (("latency_ms", self.latency_ms), ("energy_j", self.energy_j)):
            if value is not None and not 0 < value < math.inf:
                raise ServiceError(f"{name} must be a positive number, got {value}", name)
        return self


def hash_secret(secret: str, salt: bytes) -> str:
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT).hex()


class KeyService:
    def __init__(self, db: Database):
        self.db = db
        self._verified: dict[bytes, int] = {}  # sha256(key) → key id: skips scrypt after the first use
        self._lock = threading.Lock()

    def create(self, name: str, role: Role, requests_per_minute: int | None = None,
               budget: KeyBudget | None = None) -> tuple[ApiKey, str]:
        """Store a new key; the plaintext is returned here and never again. A name or a rate the
        store cannot hold is a ServiceError naming it (PostgreSQL refused them at insert)."""
        if not 1 <= len(name) <= KEY_NAME_CHARS:
            raise ServiceError(f"a key's name is 1 to {KEY_NAME_CHARS} characters, got {len(name)}", "name")
        if requests_per_minute is not None and not 1 <= requests_per_minute <= INTEGER_MAX:
            raise ServiceError(f"requests per minute is 1 to {INTEGER_MAX}, got {requests_per_minute}", "rpm")
        prefix, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
        b = (budget or KeyBudget()).checked()
        with self.db.session() as s:
            row = KeyRepository(s).add(name, role, prefix, salt.hex(), hash_secret(secret, salt), requests_per_minute,
                                       b.latency_ms, b.energy_j)
        return row, f"{KEY_PREFIX}{prefix}.{secret}"

    def set_budget(self, key_id: int, budget: KeyBudget) -> None:
        """Replace the key's default budgets (None clears one)."""
        b = budget.checked()
        with self.db.session() as s:
            if not KeyRepository(s).set_budget(key_id, b.latency_ms, b.energy_j):
                raise NotFound(f"no key with id {key_id}", "id")

    def budget(self, key_id: int | None) -> KeyBudget:
        """The key's default budgets; none for no key (open mode, the env admin key)."""
        if key_id is None:
            return KeyBudget()  # read nothing: a request without a key is answered without the store
        with self.db.session() as s:
            row = KeyRepository(s).get(key_id)
            return KeyBudget(row.default_latency_ms, row.default_energy_j) if row else KeyBudget()

    def verify(self, token: str) -> ApiKey | None:
        """The active stored key this token is, or None."""
        if not KEY_SHAPE.fullmatch(token):
            return None
        fingerprint = hashlib.sha256(token.encode()).digest()
        with self.db.session() as s:
            repo = KeyRepository(s)
            cached = self._verified.get(fingerprint)
            row = repo.get(cached) if cached is not None else self._match(repo, token)
        if row is None or row.revoked_at is not None:
            return None
        with self._lock:
            self._verified[fingerprint] = row.id
        return row

    @staticmethod
    def _match(repo: KeyRepository, token: str) -> ApiKey | None:
        prefix, _, secret = token.removeprefix(KEY_PREFIX).partition(".")  # of KEY_SHAPE: both there
        row = repo.by_prefix(prefix)
        if row is None or not hmac.compare_digest(row.digest, hash_secret(secret, bytes.fromhex(row.salt))):
            return None
        return row

    def has_active(self, role: Role) -> bool:
        with self.db.session() as s:
            return KeyRepository(s).has_active(role)

    def list(self) -> Sequence[ApiKey]:
        with self.db.session() as s:
            return KeyRepository(s).list()

    def revoke(self, key_id: int) -> None:
        if not 1 <= key_id <= INTEGER_MAX:  # no key has it, and PostgreSQL refuses to look it up
            raise NotFound(f"no key with id {key_id} (ids are 1 to {INTEGER_MAX})", "id")
        with self.db.session() as s:
            if not KeyRepository(s).revoke(key_id):
                raise NotFound(f"no key with id {key_id}", "id")


class RateLimiter:
    """A sliding one-minute log per key: at most `limit` requests in any 60 s, counted in the
    store, so every process and Serve replica on one database shares each key's limit."""

    def __init__(self, db: Database, window_s: float = 60.0, clock: Callable[[], float] = time.time):
        self.db, self.window_s, self.clock = db, window_s, clock

    def hit(self, key_id: int, limit: int) -> float | None:
        """Count a request; returns None if allowed, else the seconds until one is."""
        with self.db.session() as s:
            return RateLimitRepository(s).hit(key_id, self.clock(), self.window_s, limit)


class AccessControl:
    """Decides whether a request with this token may do what needs `role`."""

    def __init__(self, keys: KeyService, settings: AuthSettings, limiter: RateLimiter | None = None):
        self.keys, self.settings = keys, settings
        self.limiter = limiter or RateLimiter(keys.db)

    def check(self, role: Role | None, token: str | None) -> Caller:
        if role is None:
            return Caller(None)
        if self._is_env_admin(token):
            return Caller("admin", env_admin=True)
        key = self._presented(token)
        if role == "admin":
            self._require_admin(key, token)
        elif key is None and self.settings.require_client_keys:
            raise Unauthorized("invalid API key" if token else
                               "a client API key is required: send 'Authorization: Bearer <key>'")
        if key is not None:
            self._count(key)
        return Caller(cast(Role, key.role), key.id) if key else Caller(None)

    def _presented(self, token: str | None) -> ApiKey | None:
        """The active key the token is, else None. A token sent as one of ours (`sk-sr-…`) that
        is no active key (mistyped, revoked) is a 401 in every mode: served as anonymous, it
        would slip past its revocation and its rate limit. Any other token where no key is
        required is the placeholder an OpenAI client must send (README), served as no key."""
        key = self.keys.verify(token) if token else None
        if key is None and token and token.startswith(KEY_PREFIX):
            raise Unauthorized("invalid API key")
        return key

    def _require_admin(self, key: ApiKey | None, token: str | None) -> None:
        if not self.admin_configured() and self.settings.require_client_keys:
            # a service that asks keys of its readers does not let anyone change its pool: open
            # mode is for local use, where no key is asked at all
            refusal = Forbidden if key is not None else Unauthorized  # a client key is known, just not enough
            raise refusal("this needs the admin API key, and none exists yet: create one with "
                          "`skillroute keys create --admin`, or set SKILLROUTE_ADMIN_KEY")
        if not self.admin_configured():
            return  # open mode: nobody has set an admin key yet
        if key is None:
            raise Unauthorized("this needs the admin API key" if token is None else "invalid API key")
        if key.role != "admin":
            raise Forbidden("this needs the admin API key; a client key cannot change the pool")

    def admin_configured(self) -> bool:
        return self.settings.admin_key is not None or self.keys.has_active("admin")

    def _is_env_admin(self, token: str | None) -> bool:
        admin = self.settings.admin_key
        return bool(admin and token and hmac.compare_digest(admin.get_secret_value().encode(), token.encode()))

    def _count(self, key: ApiKey) -> None:
        limit = key.requests_per_minute or self.settings.key_requests_per_minute
        wait = self.limiter.hit(key.id, limit)
        if wait is not None:
            raise RateLimited(f"key {key.name!r} is limited to {limit} requests per minute", wait)
