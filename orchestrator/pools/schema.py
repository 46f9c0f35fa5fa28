"""The YAML file that describes a pool: its experts and how they are profiled.

Every model forbids unknown fields, so a typo in a pool file is an error naming the field (and,
through `loader.load_pool_config`, the file) instead of a setting silently ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from experts.types import ExpertSpec, check_shown
from orchestrator.aggregation.prompt import AggregationMode
from orchestrator.domain import RecruitMode, not_reserved
from skills.datasets import MMLU_SPLITS, load_mmlu


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MMLUSource(Strict):
    """MMLU questions; the split and subjects are checked as the file is read (profiling read
    them only at the start, and a typo failed it with a traceback naming no field)."""

    kind: Literal["mmlu"] = "mmlu"
    split: str = "validation"
    per_subject: int = Field(default=1, ge=1)
    subjects: list[str] | None = Field(default=None, min_length=1)  # None: all 57; [] would be none

    @field_validator("split")
    @classmethod
    def _split_is_known(cls, split: str) -> str:
        if split not in MMLU_SPLITS:
            raise ValueError(f"unknown MMLU split {split!r}; choose one of {', '.join(MMLU_SPLITS)}")
        return split

    @field_validator("subjects")
    @classmethod
    def _subjects_exist(cls, subjects: list[str] | None, info: ValidationInfo) -> list[str] | None:
        split = info.data.get("split")  # absent when the split itself was refused
        if subjects is not None and split is not None and (problem := _mmlu_problem(split, tuple(subjects))):
            raise ValueError(problem)
        return subjects


@functools.cache
def _mmlu_problem(split: str, subjects: tuple[str, ...]) -> str | None:
    """What profiling's own loader says of these subjects, None when it takes them (cached: a
    read of MMLU takes ~0.2 s, and a process validates the same pool more than once)."""
    try:
        load_mmlu(split, per_subject=1, subjects=subjects)
    except (ValueError, RuntimeError) as exc:  # RuntimeError: MMLU's package is not installed
        return str(exc)
    return None


class MMLUProSource(Strict):
    """MMLU-Pro questions of a replay folder; `split` picks the seeded stratified profiling or
    test part (`pools.loader.split_questions`, the one the routing benchmark uses)."""

    kind: Literal["mmlu_pro"] = "mmlu_pro"
    path: str
    limit: int | None = Field(default=None, ge=1)  # None: every question (0 read as none and took all)
    split: Literal["all", "profiling", "test"] = "all"
    test_size: float = Field(default=0.5, gt=0.0, lt=1.0)
    split_seed: int = 0

    @model_validator(mode="after")
    def _path_is_a_recording(self) -> MMLUProSource:
        """Checked as profiling reads it: relative to the working directory, as given (a split
        part is drawn from a recording folder; "all" reads a folder or a questions file)."""
        path = Path(self.path)
        if not (path.is_dir() if self.split != "all" else path.exists()):
            what = "recording folder" if self.split != "all" else "recording folder or questions file"
            where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
            raise ValueError(f"path: no {what} at {self.path!r}{where}")
        return self


class ArithmeticSource(Strict):
    kind: Literal["arithmetic"] = "arithmetic"
    n: int = Field(default=12, ge=1)


ValidationSource = Annotated[MMLUSource | MMLUProSource | ArithmeticSource, Field(discriminator="kind")]


def _default_sources() -> list[ValidationSource]:
    return [MMLUSource(), ArithmeticSource()]


class ValidationConfig(Strict):
    """The profiling set, and how a question's skills are read: `embedding` (the fast default:
    the question's nearest seed skills by embedding) or `llm` (Symbolic-MoE: the keyword expert
    names 2-5 keywords, `keyword_samples` times; keywords several samples agree on are kept)."""

    # at least one: a set of no question profiled every expert "ready" on nothing
    sources: list[ValidationSource] = Field(default_factory=lambda: _default_sources(), min_length=1)
    keyword_mode: Literal["embedding", "llm"] = "embedding"
    keyword_expert: str | None = Field(default=None, description="The expert that reads keywords in llm mode.")
    keyword_samples: int = Field(default=5, ge=1, le=16)
    skills_per_question: int = Field(default=3, ge=1, le=8)
    seed: int = 0

    @model_validator(mode="after")
    def _keyword_fields_need_llm_mode(self) -> ValidationConfig:
        """Read by nothing in embedding mode, yet part of `dataset_key`: changing one re-profiled
        every expert, and a keyword_expert naming no expert passed."""
        unused = sorted({"keyword_expert", "keyword_samples"} & self.model_fields_set)
        if self.keyword_mode == "embedding" and unused:
            raise ValueError(f"{', '.join(unused)}: read only with keyword_mode llm (this set reads skills by "
                             "embedding); remove it, or set keyword_mode: llm")
        return self

    def dataset_key(self) -> str:
        """Names this exact profiling set; a changed config is a new set, profiled anew."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return "v1-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


class GenerationBudget(Strict):
    profiling_max_tokens: int = Field(default=24, ge=1)
    expert_max_tokens: int = Field(default=96, ge=1)
    aggregator_max_tokens: int = Field(default=96, ge=1)


class AggregatorConfig(Strict):
    """How recruited answers become one: `llm` (Symbolic-MoE: the aggregator expert reads them),
    `vote` (the router-weighted vote of their option letters, no LLM: replay pools), or `auto`
    (the vote where the question offers lettered options and every answer picked one, the
    aggregator otherwise: free-text questions, or an answer that gave no letter; a query under a
    latency or energy budget, whose plan paid for no aggregator on lettered options, is settled by
    the vote of the answers that gave a letter instead, or the best-ranked answer where none did)."""

    mode: AggregationMode = "llm"
    fixed: str | None = None  # skip the benchmark and use this expert
    tasks: int = Field(default=8, ge=1)


class PoolConfig(Strict):
    name: str = "default"
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    generation: GenerationBudget = Field(default_factory=GenerationBudget)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    router: Literal["symbolic", "knn"] | None = None  # None: the service's setting
    recruit: RecruitMode | None = None  # how a query naming no mode recruits; None: the router's own
    experts: list[ExpertSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_are_distinct(self) -> PoolConfig:
        """One name, one expert: a start registered the first and failed on the second, and the
        next served whichever came last."""
        names = [not_reserved(e.name) for e in self.experts]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"experts: the name {twice[0]!r} is given to more than one expert; each expert needs "
                             "a name of its own")
        return self

    @model_validator(mode="after")
    def _sources_can_be_shown(self) -> PoolConfig:
        for i, expert in enumerate(self.experts):
            try:
                check_shown(expert.base)
            except ValueError as exc:
                raise ValueError(f"experts[{i}] ({expert.name}).base.{exc}") from None
        return self

    @model_validator(mode="after")
    def _fixed_aggregator_is_in_the_pool(self) -> PoolConfig:
        """A name of no expert (a typo) was stored as the aggregator and silently passed over."""
        fixed = self.aggregator.fixed
        if fixed is not None and fixed not in {e.name for e in self.experts}:
            raise ValueError(f"aggregator.fixed: {fixed!r} is no expert of the pool; name one of its experts, or "
                             "leave it out to have the aggregator benchmarked")
        return self

    @model_validator(mode="after")
    def _keyword_expert_is_in_the_pool(self) -> PoolConfig:
        v = self.validation
        if v.keyword_mode == "llm" and v.keyword_expert not in {e.name for e in self.experts}:
            raise ValueError(f"validation.keyword_expert: keyword_mode llm needs an expert of the pool, got "
                             f"{v.keyword_expert!r}")
        return self
