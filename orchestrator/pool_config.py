"""The YAML file that describes a pool: its experts and how they are profiled."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from experts.types import ExpertSpec


class MMLUSource(BaseModel):
    kind: Literal["mmlu"] = "mmlu"
    split: str = "validation"
    per_subject: int = Field(default=1, ge=1)
    subjects: list[str] | None = None


class MMLUProSource(BaseModel):
    """MMLU-Pro questions of a replay folder; `split` picks the seeded stratified profiling or
    test part (`routing.replay_pool.split_questions`, the one the routing benchmark uses)."""

    kind: Literal["mmlu_pro"] = "mmlu_pro"
    path: str
    limit: int | None = None
    split: Literal["all", "profiling", "test"] = "all"
    test_size: float = Field(default=0.5, gt=0.0, lt=1.0)
    split_seed: int = 0


class ArithmeticSource(BaseModel):
    kind: Literal["arithmetic"] = "arithmetic"
    n: int = Field(default=12, ge=1)


ValidationSource = Annotated[MMLUSource | MMLUProSource | ArithmeticSource, Field(discriminator="kind")]


def _default_sources() -> list[ValidationSource]:
    return [MMLUSource(), ArithmeticSource()]


class ValidationConfig(BaseModel):
    sources: list[ValidationSource] = Field(default_factory=lambda: _default_sources())
    keyword_mode: Literal["embedding", "llm"] = "embedding"
    keyword_expert: str | None = None  # the expert whose base model reads keywords in llm mode
    skills_per_question: int = Field(default=3, ge=1, le=8)
    seed: int = 0

    def dataset_key(self) -> str:
        """Names this exact profiling set; a changed config is a new set, profiled anew."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return "v1-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


class GenerationBudget(BaseModel):
    profiling_max_tokens: int = Field(default=24, ge=1)
    expert_max_tokens: int = Field(default=96, ge=1)
    aggregator_max_tokens: int = Field(default=96, ge=1)


class AggregatorConfig(BaseModel):
    mode: Literal["llm", "vote"] = "llm"  # vote: router-weighted vote of the letters, no LLM (replay)
    fixed: str | None = None  # skip the benchmark and use this expert
    tasks: int = Field(default=8, ge=1)


class PoolConfig(BaseModel):
    name: str = "default"
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    generation: GenerationBudget = Field(default_factory=GenerationBudget)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    router: Literal["symbolic", "knn"] | None = None  # None: the service's setting
    experts: list[ExpertSpec] = Field(default_factory=list)


class PoolConfigError(ValueError):
    pass


REPLAY_PREFIX = "replay:"


def load_pool_config(path: str | Path) -> PoolConfig:
    """A pool YAML file, or `replay:FOLDER`: every model recorded in a replay folder."""
    if str(path).startswith(REPLAY_PREFIX):
        from orchestrator.routing.replay_pool import replay_pool_config

        return replay_pool_config(str(path)[len(REPLAY_PREFIX):])
    p = Path(path)
    if not p.is_file():
        raise PoolConfigError(f"pool file not found: {p}")
    try:
        return PoolConfig.model_validate(yaml.safe_load(p.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise PoolConfigError(f"invalid pool file {p}: {exc}") from exc
