"""A backend that times a batch as a whole teaches the planner no reply's latency."""

from __future__ import annotations

from experts.traits import traits
from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.budgets.planner import BudgetPlanner
from orchestrator.domain import Answer


def reply(completion_tokens: int, latency_s: float) -> Answer:
    return Answer(expert="v", role="expert", text="x", prompt_tokens=100, completion_tokens=completion_tokens,
                  latency_s=latency_s)


def test_replies_timed_as_one_batch_do_not_teach_the_local_slowdown() -> None:
    """One vLLM call held three short replies and a long one and took the long one's time;
    each reply was given that time, and a short reply's prediction went from 2.1 s to 33 s."""
    vllm = ExpertSpec(name="v", base=BaseModelSpec(kind="vllm", source="/m/qwen2.5-1.5b-instruct"))
    planner = BudgetPlanner()
    short, batch_s = planner.cost(vllm, 100, 10).latency_s, planner.cost(vllm, 100, 400).latency_s
    planner.observe({"v": vllm}, [reply(10, batch_s)] * 3 + [reply(400, batch_s)])
    assert planner.slowdown.empty and planner.cost(vllm, 100, 10).latency_s == short
    assert traits(vllm.base).batch_timed and not planner.learns_from(vllm)


def test_replies_timed_one_by_one_still_teach_it() -> None:
    llama = ExpertSpec(name="v", base=BaseModelSpec(kind="llamacpp", source="/m/qwen2.5-1.5b-instruct.gguf"))
    planner = BudgetPlanner()
    before = planner.cost(llama, 100, 10).latency_s
    planner.observe({"v": llama}, [reply(10, 3 * before)] * 5)
    assert planner.cost(llama, 100, 10).latency_s > before
    assert not traits(llama.base).batch_timed and planner.learns_from(llama)
