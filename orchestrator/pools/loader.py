"""Loads a pool: a YAML file, or `replay:FOLDER` (every model recorded in a replay folder).

A replay source makes every model column of the folder's `predictions.csv.gz` one expert, so a
model added to the folder later joins the pool, is profiled from its recorded answers on the
profiling split and can be recruited, with no code change. The split is the one
`bench/routing_quality.py` uses, so the service and the benchmark profile on the same questions
(less the service's 15 exact repeats: a replay expert answers every copy with the first's letter).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from experts.backend import ModelSourceError
from experts.replay import Recording, load_recording, normalise_text
from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.pools.schema import AggregatorConfig, GenerationBudget, MMLUProSource, PoolConfig, ValidationConfig

REPLAY_PREFIX = "replay:"


class PoolConfigError(ValueError):
    pass


def load_pool_config(path: str | Path) -> PoolConfig:
    """The pool a file or a `replay:` source describes; a bad one names the file and the field."""
    if str(path).startswith(REPLAY_PREFIX):
        try:
            return replay_pool_config(str(path)[len(REPLAY_PREFIX):])
        except (ValueError, ModelSourceError) as exc:
            raise PoolConfigError(f"invalid replay pool {path}: {exc}") from exc
    p = Path(path)
    if not p.is_file():
        raise PoolConfigError(f"pool file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")  # YAML's own encoding, whatever the locale says
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, or not text: a clear error, not a traceback
        raise PoolConfigError(f"cannot read pool file {p}: {exc}") from exc
    try:
        return PoolConfig.model_validate(_mapping(yaml.load(text, Loader=_UniqueKeyLoader)))  # noqa: S506
    except yaml.YAMLError as exc:
        raise PoolConfigError(f"invalid pool file {p}: {_yaml_problem(exc)}") from exc
    except ValidationError as exc:
        raise PoolConfigError(f"invalid pool file {p}: {field_errors(exc, 'pool')}") from exc


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping: plain YAML keeps the last, so
    a second `experts:` block silently replaced the first and the start removed its experts."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged, may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if not _hashable(key):  # `? [a, b]` or `{[a]: 1}`: the membership test below would raise TypeError
                raise yaml.constructor.ConstructorError(None, None, f"a key must be a plain value, not a "
                                                        f"{type(key).__name__}", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _hashable(key: object) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


def _mapping(document: object) -> object:
    """The file's document, which must be a mapping: an empty file, a list or a scalar loaded as a
    pool of no experts, and a start synced the store to it, removing every expert."""
    if not isinstance(document, dict):
        raise yaml.YAMLError(f"the file must hold a mapping of pool fields (name, validation, experts, ...), "
                             f"not {'nothing' if document is None else type(document).__name__}")
    return document


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, in a line (PyYAML's own text spans lines and quotes the source)."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def field_errors(exc: ValidationError, whole: str = "") -> str:
    """Each error as `field: message` (`whole` where it is the whole model's), on one line:
    pydantic's own text takes 2-3 lines each. A pool file's and the settings' errors alike."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in exc.errors())


_NAME_BAD = re.compile(r"[^A-Za-z0-9_.\-]+")


def expert_name(model: str) -> str:
    """A valid expert name for a recorded model column (ExpertSpec allows [A-Za-z0-9_.-], 64)."""
    name = _NAME_BAD.sub("-", model.strip()).strip("-_.")[:64]
    return name or "model"


def replay_pool(folder: str | Path, models: Sequence[str] | None = None) -> list[ExpertSpec]:
    """One replay expert per recorded model (all columns, or the named ones, in folder order)."""
    recording = load_recording(folder)
    wanted = list(models) if models is not None else recording.models
    if missing := [m for m in wanted if not recording.has_model(m)]:
        raise ValueError(f"models not recorded in {recording.folder}: {', '.join(missing)}")
    _check_names_distinct(wanted)
    source = str(recording.folder)
    return [ExpertSpec(name=expert_name(m), base=BaseModelSpec(kind="replay", source=source, model=m)) for m in wanted]


def _check_names_distinct(columns: Sequence[str]) -> None:
    """Two columns whose names differ only where an expert name cannot follow (`acme/x` and
    `acme:x`) would be one expert: refused naming both, as any rename here could take a name
    a later column of the folder wants."""
    seen: dict[str, str] = {}
    for column in columns:
        name = expert_name(column)
        if name in seen:
            raise ValueError(f"the recorded models {seen[name]!r} and {column!r} would both be the expert {name!r} "
                             "(an expert name holds only A-Z a-z 0-9 _ . -, 64 at most): rename one of the columns")
        seen[name] = column


def replay_pool_config(folder: str | Path, test_size: float = 0.5, seed: int = 0) -> PoolConfig:
    """The pool `skillroute serve --pool replay:FOLDER` runs: every recorded model, profiled from
    its recorded answers on the same seeded profiling split the routing benchmark uses, routed
    by the k-NN router and aggregated by weighted voting (no replay expert can read answers)."""
    experts = replay_pool(folder)
    path = str(load_recording(folder).folder)
    source = MMLUProSource(path=path, split="profiling", test_size=test_size, split_seed=seed)
    return PoolConfig(
        name=f"replay:{path}",
        validation=ValidationConfig(sources=[source], seed=seed),
        generation=GenerationBudget(profiling_max_tokens=8, expert_max_tokens=8, aggregator_max_tokens=8),
        aggregator=AggregatorConfig(mode="vote"),
        router="knn",
        experts=experts,
    )


def profiling_split(folder: str | Path, split: str, test_size: float, seed: int) -> set[str]:
    """The question ids of one part of `split_questions`."""
    profiling, test = split_questions(load_recording(folder), test_size, seed)
    return set(profiling if split == "profiling" else test)


def split_questions(recording: Recording, test_size: float, seed: int) -> tuple[list[str], list[str]]:
    """Profiling and test question ids, stratified by category and drawn by `seed`.

    Only questions recorded for every model take part, so each method is scored on the same set.
    Questions with the same normalised text (MMLU-Pro repeats 103 texts under 211 ids) all go to
    the side their first copy in the recording drew: a test question whose copy was profiled is
    found by the k-NN router as its own neighbour, which measures memory, not routing. That copy
    is in the test part as often as any question (a copy chosen by draw order would be there
    more often), so a category's test share moves by at most its repeated questions.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test size must be a fraction in (0, 1), got {test_size}")
    by_category: dict[str, list[str]] = defaultdict(list)
    for qid, q in recording.questions.items():
        if all(recording.recorded(m, qid) for m in recording.models):
            by_category[q.category].append(qid)
    rng = random.Random(seed)
    drawn: dict[str, bool] = {}  # question id → drawn for test, in output order
    for category in sorted(by_category):
        ids = by_category[category]
        rng.shuffle(ids)
        n_test = round(len(ids) * test_size)
        drawn.update((qid, i < n_test) for i, qid in enumerate(ids))
    first = _first_copies(recording, drawn)
    return [q for q in drawn if not drawn[first[q]]], [q for q in drawn if drawn[first[q]]]


def _first_copies(recording: Recording, ids: Iterable[str]) -> dict[str, str]:
    """Each question id → the first id in the recording with its normalised text (often itself)."""
    text = {qid: normalise_text(recording.questions[qid].question) for qid in ids}
    first: dict[str, str] = {}
    for qid in recording.questions:
        if qid in text:
            first.setdefault(text[qid], qid)
    return {qid: first[t] for qid, t in text.items()}
