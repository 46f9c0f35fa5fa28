"""`aggregator.fixed` is a choice, not a measurement: once the pool file drops it, the benchmark
chooses, the formerly fixed expert included, as on a pool that was never fixed."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import Any

from experts.mock import MockBackend
from experts.types import BaseModelSpec, FinishReason, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import AggregatorConfig, ArithmeticSource, PoolConfig, ValidationConfig
from orchestrator.services.expert_changes import ExpertChange
from orchestrator.services.pool import AGGREGATOR_KEY
from orchestrator.store.repositories.state import StateRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings

WAIT_S = 30  # an event not set by then means the order under test did not happen
EXPERTS = [mock_expert("big", "m1"), mock_expert("dumb", "m2"), mock_expert("dumber", "m3"),
           mock_expert("smart", "calc")]


class Calculator(MockBackend):
    """Right on every profiling sum; as an aggregator, right on about half the tasks."""

    def _words(self, request: GenerationRequest) -> tuple[list[str], FinishReason]:
        prompt = "\n".join(m.content for m in request.messages)
        a, op, b = re.findall(r"What is (-?\d+)([-+*])(\d+)\?", prompt)[-1]
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        if "Response" in prompt and hashlib.sha256(prompt.encode()).digest()[0] % 2:
            value += 1
        return [f"The answer is {value}"], "stop"


def _backend(spec: BaseModelSpec) -> MockBackend:
    return Calculator(spec.key) if spec.source == "calc" else MockBackend(spec.key)


def _start(data: Path, embedder: Embedder, aggregator: AggregatorConfig) -> tuple[str | None, dict[str, Any]]:
    """Bootstrap the pool on `data`; the aggregator it uses and the stored choice."""
    pool = PoolConfig(validation=ValidationConfig(sources=[ArithmeticSource(n=8)]), experts=EXPERTS,
                      aggregator=aggregator)
    c = SkillRoute(quiet_settings(data), pool, factory=_backend, embedder=embedder)
    try:
        c.bootstrap()
        c.pool.refresh()
        with c.db.session() as s:
            return c.pool.snapshot.aggregator, dict(StateRepository(s).get(AGGREGATOR_KEY) or {})
    finally:
        c.close()


def test_a_fixed_aggregator_dropped_from_the_pool_file_lets_the_benchmark_choose(
        tmp_path: Path, embedder: Embedder) -> None:
    fixed, _ = _start(tmp_path / "data", embedder, AggregatorConfig(fixed="big"))
    assert fixed == "big"
    chosen, state = _start(tmp_path / "data", embedder, AggregatorConfig(tasks=6))
    never_fixed, _ = _start(tmp_path / "fresh", embedder, AggregatorConfig(tasks=6))
    assert chosen == never_fixed == "smart"
    assert state["accuracy"]["big"] < 1.0  # measured this time, not the fixed choice's 1.0


def test_a_fixed_choice_stored_before_as_its_only_score_is_not_kept(tmp_path: Path, embedder: Embedder) -> None:
    """What a service before this fix stored for `fixed: big`: {big: 1.0} as if benchmarked."""
    _start(tmp_path, embedder, AggregatorConfig(fixed="big"))
    c = SkillRoute(quiet_settings(tmp_path), PoolConfig(experts=EXPERTS), factory=_backend, embedder=embedder)
    with c.db.session() as s:
        StateRepository(s).put(AGGREGATOR_KEY, {"name": "big", "accuracy": {"big": 1.0}})
    c.close()
    chosen, state = _start(tmp_path, embedder, AggregatorConfig(tasks=6))
    assert chosen == "smart" and state["accuracy"]["big"] < 1.0


def test_a_persona_changed_during_a_benchmark_keeps_no_score_of_the_old_one(tmp_path: Path,
                                                                            embedder: Embedder) -> None:
    """A new expert's aggregator benchmark was running when big's persona changed: the change
    dropped big's score, and the benchmark's write put it back, so big was never benchmarked
    under its new persona."""
    benching, go_on, benched = threading.Event(), threading.Event(), set[str]()

    def held(request: GenerationRequest) -> float:
        if "|" in request.request_id:  # an aggregator benchmark's task: "expert|task"
            benched.add(request.request_id.split("|")[0])
        if request.request_id.startswith("late|"):
            benching.set()
            go_on.wait(WAIT_S)
        return 0.0

    def backend(spec: BaseModelSpec) -> MockBackend:
        return (Calculator if spec.source == "calc" else MockBackend)(spec.key, delay_s=held)

    pool = PoolConfig(validation=ValidationConfig(sources=[ArithmeticSource(n=8)]), experts=EXPERTS)
    c = SkillRoute(quiet_settings(tmp_path), pool, factory=backend, embedder=embedder)
    c.bootstrap()
    try:
        c.experts.register(mock_expert("late", "m4"))
        assert benching.wait(WAIT_S)
        c.experts.update(c.experts.find("big").id, ExpertChange({"system_prompt": "a new persona"}))
        benched.clear()
        go_on.set()
        c.experts.queue.join()
        assert "big" in benched  # benchmarked again, after its new profile
        with c.db.session() as s:
            assert {"late", "big"} <= set((StateRepository(s).get(AGGREGATOR_KEY) or {})["accuracy"])
    finally:
        go_on.set()
        c.close()
