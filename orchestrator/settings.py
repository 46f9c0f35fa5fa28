"""One settings class for the service (env prefix SKILLROUTE_), plus where things live on disk."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_POOL = Path(__file__).parent / "pools" / "default.yaml"


def default_data_dir() -> Path:
    return Path.home() / ".cache" / "skillroute"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKILLROUTE_", env_nested_delimiter="__")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    pool: str = str(DEFAULT_POOL)
    host: str = "127.0.0.1"
    port: int = 8000
    default_k: int = Field(default=3, ge=1, le=8)
    recruit_mode: Literal["sample", "topk", "dynamic"] | None = None  # None: the router's preferred mode
    router: Literal["symbolic", "knn"] = "symbolic"
    memory_budget_gb: float = Field(default=8.0, gt=0)
    seed: int = 0
    batch_max: int = Field(default=32, ge=1, le=1024)
    batch_wait_ms: float = Field(default=50.0, ge=0, le=10_000)

    @property
    def db_url(self) -> str:
        """SQLite file under the data dir unless a URL (Postgres, say) is given."""
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.data_dir / 'skillroute.db'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
