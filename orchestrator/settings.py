"""The one settings object (environment prefix SKILLROUTE_), built once and passed down.

Sections nest: `SKILLROUTE_DATABASE__URL`, `SKILLROUTE_BATCHING__WAIT_MS`, … . The short flat
names the README has always documented (`SKILLROUTE_DATABASE_URL`, `SKILLROUTE_ADMIN_KEY`,
`OPENAI_API_KEY`, `RAY_ADDRESS`, …) still work: `FlatNames` maps each onto its section field,
below the nested form in priority. Nothing else in the project reads the environment; the
experts/ backends take what they need from `Settings.backends` as arguments.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from experts.options import DEFAULT_DATA_DIR, BackendOptions
from skills.embedder import DEFAULT_CACHE_DIR, EmbeddingKind

DEFAULT_POOL = Path(__file__).parent / "pools" / "default.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _home(path: Path) -> Path:
    """`~` expanded: the environment hands it over literally, and the database then went to a
    `./~` folder while the model files, which expand it, went to the home directory."""
    return path.expanduser()


class DatabaseSettings(Section):
    url: str | None = Field(default=None, description="SQLAlchemy URL; unset: SQLite under data_dir.")


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")  # what an admin key may hold (`AuthSettings._not_blank`)


class AuthSettings(Section):
    admin_key: SecretStr | None = None
    require_client_keys: bool = False
    key_requests_per_minute: int = Field(default=600, ge=1, description="For keys created without their own limit.")

    @field_validator("admin_key")
    @classmethod
    def _not_blank(cls, key: SecretStr | None) -> SecretStr | None:
        # an empty key matches no token yet counts as configured: every admin write was refused
        # for good, with nothing said. Refused here, not read as unset, which would open admin writes.
        if key is not None and not key.get_secret_value().strip():
            raise ValueError("is set but empty, so no request could ever be admin: unset it (no admin key) "
                             "or give it a value")
        # so is one a Bearer header cannot carry: a blank or a line break (a key read from a file
        # with its newline) never matches, and past ASCII a header is read as Latin-1, not UTF-8
        if key is not None and not _VISIBLE_ASCII.fullmatch(key.get_secret_value()):
            raise ValueError("holds a blank, a line break or a character past ASCII, which no Authorization "
                             "header can carry, so no request could ever be admin: give printable ASCII alone "
                             "(strip the newline of a key read from a file)")
        return key


class BudgetSettings(Section):
    devices_file: str | None = Field(default=None, description="Device profiles; unset: experts/devices.yaml.")


class BackendSettings(Section):
    memory_budget_gb: float = Field(default=8.0, gt=0, description="What may stay resident on the "
                                  "local CPU worker (a devices file's workers give their own `memory_gb`).")
    llama_threads: int | None = Field(default=None, ge=1, description="llama.cpp threads; unset: every core.")
    vllm_python: str | None = Field(default=None, description="A python that imports vllm; unset: .venv-vllm.")
    openai_api_key: SecretStr | None = Field(default=None, description="Sent to OpenAI-compatible experts.")
    replay_time_scale: float = Field(default=0.0, ge=0, le=100,
                                     description="> 0: a replay reply takes its simulated latency x this, for real.")

    @field_validator("openai_api_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, key: object) -> object:
        # OPENAI_API_KEY="" (a placeholder exported empty) means no key, not "Bearer " sent to each server
        raw = key.get_secret_value() if isinstance(key, SecretStr) else key
        return None if isinstance(raw, str) and not raw.strip() else key


class BatchingSettings(Section):
    max_batch: int = Field(default=32, ge=1, le=1024)
    wait_ms: float = Field(default=0.0, ge=0, le=10_000, description="How long a batch waits for more queries "
                           "after its first; 0: it takes what queued while the previous batch ran.")
    max_batch_tokens: int = Field(default=65_536, ge=1, description="A batch closes once its queries' predicted "
                                  "prompt and output tokens reach this, so long queries cannot hold short ones.")
    max_waiting: int = Field(default=10_000, ge=1, description="Queries waiting for a batch past which a new "
                             "request is refused (503, Retry-After) before anything of it is stored.")


class LearningSettings(Section):
    """How the router learns from traffic (orchestrator/routing/learning.py)."""

    competition_rate: float = Field(default=0.05, ge=0, le=1, description="Share of routed queries that compete.")
    explore_rate: float = Field(default=0.1, ge=0, le=1, description="Share on which a new expert answers as an extra.")
    per_minute: int = Field(default=30, ge=0, description="At most this many competitions and explorations a minute.")
    refit_every: int = Field(default=200, ge=1, description="Lessons between refitting the k-NN router's parameters.")
    consensus_teaches: bool = Field(
        default=False, description="A competition scored by consensus alone (no gold) teaches the router; off: it "
        "waits for feedback (consensus lessons measured to hurt, see routing/learning.py).")


class IdempotencySettings(Section):
    """`Idempotency-Key` on POSTs: a retry returns the first request's queries or batch."""

    retention_hours: float = Field(default=24.0, gt=0, le=24 * 365,
                                   description="A key is remembered this long, then purged.")
    retry_wait_s: float = Field(default=300.0, gt=0, le=3600,
                                description="How long a retry waits for the first request's queries to finish.")


class RecoverySettings(Section):
    """How services sharing one database tell whose accepted queries are orphaned
    (services/instances.py)."""

    heartbeat_s: float = Field(default=10.0, gt=0, le=3600, description="How often a running service says it "
                               "is alive (and takes over a dead one's queries).")
    dead_after_s: float = Field(default=60.0, gt=0, le=86_400, description="A service silent this long is dead: "
                                "another takes over its accepted queries.")

    @model_validator(mode="after")
    def _beats_before_death(self) -> RecoverySettings:
        # a live service must beat at least twice in that time, or its live queries are taken from it
        if self.dead_after_s < 2 * self.heartbeat_s:
            raise ValueError(f"dead_after_s ({self.dead_after_s:g}) must be at least twice heartbeat_s "
                             f"({self.heartbeat_s:g}): a live service would be taken for dead")
        return self


class HttpSettings(Section):
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024, description="Larger request bodies get a 413, unparsed.")


class EmbeddingSettings(Section):
    """How query and question texts are embedded (skills/embedder.py)."""

    kind: Literal["auto", "static", "transformer", "both"] = Field(
        default="auto", description="static: model2vec distilled from all-MiniLM-L6-v2 (a lookup); transformer: the "
        "sentence-transformer itself (~20 ms a question; reads a question's skills far better: bench/keywords.py); "
        "both: the two side by side, a k-NN neighbour near under both views (no better routed on the replay "
        "corpus's open pool, and a decision waits for the transformer: README, Load); auto: static under the k-NN "
        "router (question against question it routes as well, in well under a millisecond), transformer under "
        "the skill-based symbolic one.")
    cache_dir: Path = Field(default=DEFAULT_CACHE_DIR,
                            description="Where the distilled static model is built once, for every data dir.")

    _cache_home = field_validator("cache_dir")(_home)


def embedding_kind(kind: str, router: str) -> EmbeddingKind:
    """The embedding a pool routed by `router` uses (see `EmbeddingSettings.kind`)."""
    if kind == "auto":
        return "static" if router == "knn" else "transformer"
    return cast(EmbeddingKind, kind) if kind in get_args(EmbeddingKind) else "transformer"


class RaySettings(Section):
    address: str | None = Field(default=None, description="Join this cluster; unset: start Ray embedded.")
    auth_mode: str = Field(default="disabled", description="RAY_AUTH_MODE (Ray 2.60 else writes a token to $HOME).")


# flat name → (section, field): the names the README and the manifests have used
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "SKILLROUTE_DATABASE_URL": ("database", "url"),
    "SKILLROUTE_ADMIN_KEY": ("auth", "admin_key"),
    "SKILLROUTE_REQUIRE_CLIENT_KEYS": ("auth", "require_client_keys"),
    "SKILLROUTE_KEY_REQUESTS_PER_MINUTE": ("auth", "key_requests_per_minute"),
    "SKILLROUTE_DEVICES_FILE": ("budgets", "devices_file"),
    "SKILLROUTE_MEMORY_BUDGET_GB": ("backends", "memory_budget_gb"),
    "SKILLROUTE_LLAMA_THREADS": ("backends", "llama_threads"),
    "SKILLROUTE_VLLM_PYTHON": ("backends", "vllm_python"),
    "SKILLROUTE_OPENAI_API_KEY": ("backends", "openai_api_key"),
    "OPENAI_API_KEY": ("backends", "openai_api_key"),
    "SKILLROUTE_BATCH_MAX": ("batching", "max_batch"),
    "SKILLROUTE_BATCH_WAIT_MS": ("batching", "wait_ms"),
    "RAY_ADDRESS": ("ray", "address"),
    "RAY_AUTH_MODE": ("ray", "auth_mode"),
}


class FlatNames(EnvSettingsSource):
    """The flat environment names of `FLAT_NAMES`, as nested values (the first name set wins)."""

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for name, (section, key) in FLAT_NAMES.items():
            value = self.env_vars.get(name.lower())  # the source lower-cases names (case-insensitive)
            if value is not None:
                out.setdefault(section, {}).setdefault(key, value)
        return out

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKILLROUTE_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = DEFAULT_DATA_DIR
    pool: str = str(DEFAULT_POOL)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535, description="0: a free port the system picks (inline runtime).")
    default_k: int = Field(default=3, ge=1, le=8, description="Experts recruited for a query that names no k, "
                           "on every entry point (the recruit mode is the pool file's `recruit:`).")
    router: Literal["symbolic", "knn"] = "symbolic"
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    backends: BackendSettings = Field(default_factory=BackendSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    learning: LearningSettings = Field(default_factory=LearningSettings)
    idempotency: IdempotencySettings = Field(default_factory=IdempotencySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    ray: RaySettings = Field(default_factory=RaySettings)

    _data_home = field_validator("data_dir")(_home)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, FlatNames(settings_cls), dotenv_settings, file_secret_settings

    @property
    def db_url(self) -> str:
        """SQLite file under the data dir unless a URL (Postgres, say) is given."""
        if self.database.url:
            return self.database.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.data_dir / 'skillroute.db'}"

    def backend_options(self) -> BackendOptions:
        b = self.backends
        key = b.openai_api_key.get_secret_value() if b.openai_api_key else None
        return BackendOptions(data_dir=self.data_dir, llama_threads=b.llama_threads, vllm_python=b.vllm_python,
                              openai_api_key=key, replay_time_scale=b.replay_time_scale)


@lru_cache
def get_settings() -> Settings:
    return Settings()
