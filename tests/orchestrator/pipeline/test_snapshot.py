"""The pool snapshot's reads of where its experts run."""

from __future__ import annotations

from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.domain import Decision
from orchestrator.pipeline.snapshot import PoolSnapshot

FAR = BaseModelSpec(kind="openai", source="http://h:1/v1", model="m")


def snapshot(experts: dict[str, ExpertSpec], placement: dict[str, str]) -> PoolSnapshot:
    return PoolSnapshot(experts, None, None, None, placement=placement)  # type: ignore[arg-type]  # neither is read


def test_a_model_served_elsewhere_is_connected_on_every_worker_an_expert_over_it_is_placed_on() -> None:
    """Placement is per expert: keyed by model, the start connected one of the two workers."""
    experts = {"a": ExpertSpec(name="a", base=FAR), "b": ExpertSpec(name="b", base=FAR, system_prompt="terse"),
               "c": ExpertSpec(name="c", base=FAR, system_prompt="brief")}
    pairs = snapshot(experts, {"a": "cpu", "b": "gpu0", "c": "gpu0"}).served_elsewhere("cpu")
    assert [(w, base.key) for w, base in pairs] == [("cpu", FAR.key), ("gpu0", FAR.key)]


def test_a_decision_takes_its_local_experts_workers_and_none_for_a_model_served_elsewhere() -> None:
    near = BaseModelSpec(kind="mock", source="n")
    experts = {"far": ExpertSpec(name="far", base=FAR), "near": ExpertSpec(name="near", base=near),
               "agg": ExpertSpec(name="agg", base=near)}
    snap = snapshot(experts, {"near": "gpu1", "agg": "gpu2"})
    decision = Decision.made("knn", "topk", 1, [], [], ["far", "near", "gone"], "agg", None)
    assert snap.workers_of(decision, "cpu") == {"gpu1", "gpu2"}
