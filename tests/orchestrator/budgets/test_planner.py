"""The service's budget planner: placements from expert specs, shared-device sums, router quality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from experts.devices import estimate_cost, load_devices
from experts.replay import ReplayBackend
from experts.traits import traits
from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec
from experts.workers import WorkerSpec
from orchestrator.aggregation.prompt import aggregation_prompt
from orchestrator.aggregation.vote import log_odds_weight
from orchestrator.budgets.planner import (
    ANSWER_TOKENS_EXTRA,
    TEMPLATE_TOKENS,
    BudgetPlanner,
    PoolView,
    TokenLimits,
    device_name,
    device_table,
    expert_params_b,
    measured,
    site,
    slot,
    text_tokens,
)
from orchestrator.budgets.solver import InfeasibleBudget
from orchestrator.domain import Answer, ExpertScore, QueryBudget
from orchestrator.routing.recruit import score as expert_score
from orchestrator.settings import Settings
from tests.experts.conftest import gguf_bytes

TOKENS = TokenLimits(expert_max_tokens=64, aggregator_max_tokens=32)


def spec(name: str, source: str, device: str = "local-cpu", params_b: float | None = None,
         instance: str | None = None) -> ExpertSpec:
    return ExpertSpec(name=name, base=BaseModelSpec(kind="llamacpp", source=source),
                      placement=ExpertPlacement(device=device, params_b=params_b, instance=instance))


def score(name: str, p: float) -> ExpertScore:
    return expert_score(name, p, 0.5, p)


def test_an_expert_defaults_to_the_local_cpu_and_reads_its_size_from_the_model_name() -> None:
    smol = ExpertSpec(name="smol", base=BaseModelSpec(kind="llamacpp", source="package:smollm2-135m-instruct"))
    assert (device_name(smol), slot(smol)) == ("local-cpu", "local-cpu")
    assert expert_params_b(smol) == pytest.approx(0.135)
    assert expert_params_b(spec("q", "package:qwen2.5-coder-0.5b-instruct")) == pytest.approx(0.5)
    assert expert_params_b(spec("x", "/m.gguf", params_b=3.0)) == 3.0
    edge = spec("a", "/a-7b.gguf", "jetson-agx-orin", instance="box-1")
    assert slot(edge) == "jetson-agx-orin#box-1" and expert_params_b(edge) == 7.0


def test_a_replay_expert_runs_on_servers_of_its_own_and_is_costed_like_its_replies() -> None:
    def replay(name: str, model: str) -> ExpertSpec:
        return ExpertSpec(name=name, base=BaseModelSpec(kind="replay", source="/rec", model=model))

    big, small = replay("big", "Llama-2-70b-hf"), replay("small", "Mistral-7B-v0.1")
    assert (slot(big), slot(small)) == ("h100-server#big", "h100-server#small")  # in parallel
    planner = BudgetPlanner()
    predicted = planner.cost(big, 100, traits(big.base).output_tokens(24))
    backend = ReplayBackend("/rec", "Llama-2-70b-hf")
    assert traits(big.base).output_tokens(24) == backend.cot_tokens
    assert predicted == backend.estimate(100)  # tensor-parallel over the H100s its weights need


def test_experts_on_one_worker_share_its_slot_unless_served_or_recorded_elsewhere() -> None:
    """A worker runs its stages one after another, whatever device each is costed on; an
    OpenAI-compatible expert's replies come from its own server, beside them (`executor.execute`)."""
    def remote(name: str, device: str, source: str = "http://127.0.0.1:9/v1", **placed: Any) -> ExpertSpec:
        return ExpertSpec(name=name, base=BaseModelSpec(kind="openai", source=source, model=name),
                          placement=ExpertPlacement(device=device, params_b=7.0, **placed))

    cpu = WorkerSpec(name="cpu", device="local-cpu")
    edge, server = site(remote("e", "jetson-agx-orin"), cpu), site(remote("s", "h100-server"), cpu)
    assert (edge.device, server.device) == ("jetson-agx-orin", "h100-server")
    assert edge.slot != server.slot and "cpu" not in (edge.slot, server.slot)
    twins = [remote(n, "h100-server", source="http://10.0.0.2:8000/v1", instance="box") for n in "ab"]
    assert site(twins[0], cpu).slot == site(twins[1], cpu).slot == "h100-server#box"  # one box: in turn
    local = ExpertSpec(name="l", base=BaseModelSpec(kind="llamacpp", source="/m.gguf"),
                       placement=ExpertPlacement(device="jetson-agx-orin"))
    assert site(local, cpu).slot == "cpu"  # computed by the worker: in turn with its other stages
    recorded = ExpertSpec(name="r", base=BaseModelSpec(kind="replay", source="/rec", model="Mistral-7B-v0.1"))
    assert site(recorded, cpu).slot == "h100-server#r"  # looked up, its time simulated on its own servers


def test_experts_sharing_the_cpu_add_their_latencies_and_the_aggregator_follows() -> None:
    experts = {n: spec(n, "/m.gguf", params_b=p) for n, p in (("a", 0.5), ("b", 0.5), ("c", 0.135))}
    pool = PoolView(experts, "a", calibrated=True)
    planner = BudgetPlanner()
    cands = {c.name: c for c in planner.candidates(pool, "What is 2+2?", [score(n, 0.6) for n in experts], TOKENS)}
    plan = planner.plan(pool, "What is 2+2?", [score(n, 0.6) for n in experts], QueryBudget(), 3, TOKENS)
    assert set(plan.chosen) == {"a", "b", "c"}  # no limit: everyone helps
    agg = planner.aggregation(pool, "What is 2+2?", TOKENS)
    expected = sum(c.latency_s for c in cands.values()) + agg.latency(3)
    assert plan.decision.latency_s == pytest.approx(expected)  # one CPU: a sum, not a max
    cpu = device_table()["local-cpu"]
    assert cands["c"].latency_s == pytest.approx(estimate_cost(cpu, 0.135, cands_prompt(experts["c"]), 64).latency_s)


def cands_prompt(s: ExpertSpec) -> int:
    return text_tokens((s.system_prompt or "") + "What is 2+2?") + TEMPLATE_TOKENS


def test_knn_suitability_is_the_quality_and_a_symbolic_weight_is_scaled() -> None:
    experts = {"a": spec("a", "/m.gguf", params_b=0.5), "b": spec("b", "/m.gguf", params_b=0.5)}
    scores = [expert_score("a", 0.7, 0.5, 4.0), expert_score("b", 0.4, 0.5, 1.0)]
    knn = BudgetPlanner().candidates(PoolView(experts, None, calibrated=True), "q", scores, TOKENS)
    assert {c.name: c.quality for c in knn} == {"a": 0.7, "b": 0.4}
    symbolic = BudgetPlanner().candidates(PoolView(experts, None, calibrated=False), "q", scores, TOKENS)
    assert {c.name: c.quality for c in symbolic} == {"a": pytest.approx(0.9), "b": pytest.approx(0.225)}


def test_equally_good_experts_go_cheapest_first() -> None:
    experts = {"big": spec("big", "/m.gguf", params_b=1.5), "small": spec("small", "/m.gguf", params_b=0.135)}
    plan = BudgetPlanner().plan(PoolView(experts, None, True), "q", [score("big", 0.5), score("small", 0.5)],
                                QueryBudget(), 1, TOKENS)
    assert plan.chosen == ("small",)


def test_a_tight_budget_picks_fewer_and_an_impossible_one_names_the_fastest() -> None:
    experts = {"edge": spec("edge", "/e-7b.gguf", "jetson-agx-orin"), "cpu": spec("cpu", "/c.gguf", params_b=0.135),
               "server": spec("server", "/s-70b.gguf", "h100-server")}
    scores = [score("server", 0.8), score("edge", 0.6), score("cpu", 0.3)]
    pool, planner = PoolView(experts, "server", calibrated=True), BudgetPlanner()
    cands = {c.name: c for c in planner.candidates(pool, "q", scores, TOKENS)}
    loose = planner.plan(pool, "q", scores, QueryBudget(latency_s=1e4), 3, TOKENS)
    tight_s = min(c.latency_s for c in cands.values()) * 1.01
    tight = planner.plan(pool, "q", scores, QueryBudget(latency_s=tight_s), 3, TOKENS)
    assert len(tight.chosen) == 1 < len(loose.chosen)
    assert tight.decision.latency_s <= tight_s < loose.decision.latency_s
    with pytest.raises(InfeasibleBudget) as info:
        planner.plan(pool, "q", scores, QueryBudget(latency_s=tight_s / 2), 3, TOKENS)
    assert info.value.fastest.name == min(cands.values(), key=lambda c: c.latency_s).name


def test_record_shows_budget_choice_prediction_and_measured_energy_basis() -> None:
    experts = {"a": spec("a", "/m.gguf", params_b=0.5)}
    planner = BudgetPlanner()
    plan = planner.plan(PoolView(experts, None, True), "q", [score("a", 0.5)],
                        QueryBudget(latency_s=1e3, from_key=("latency_ms",)), 2, TOKENS)
    rec = measured(plan.record(), 2.0, planner.power_w)
    assert (rec.latency_ms, rec.energy_j, rec.k_max, rec.from_key) == (1e6, None, 2, ["latency_ms"])
    assert rec.chosen == ["a"] and rec.predicted_latency_s == plan.decision.latency_s
    assert rec.measured_latency_s == 2.0
    assert rec.measured_energy_j == pytest.approx(2.0 * load_devices()["local-cpu"].power_w)
    assert plan.record().measured_latency_s is None


def test_with_no_local_profile_no_energy_is_measured() -> None:
    """A devices file of a Jetson and an H100 alone: the batch's energy read 0 J, "local-cpu
    power_w x measured wall time", a profile it did not have."""
    profiles = {n: p for n, p in load_devices().items() if n != "local-cpu"}
    experts = {"a": spec("a", "/m.gguf", device="h100-server", params_b=7.0)}
    planner = BudgetPlanner(profiles)
    plan = planner.plan(PoolView(experts, None, True), "q", [score("a", 0.5)], QueryBudget(latency_s=1e3), 2, TOKENS)
    rec = measured(plan.record(), 2.0, planner.power_w)
    assert rec.measured_latency_s == 2.0
    assert (rec.measured_energy_j, rec.measured_energy_basis) == (None, None)


def test_a_devices_file_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  - {name: local-cpu, tier: local, tokens_per_s_at_1b: 5, "
                    "prefill_tokens_per_s_at_1b: 50, power_w: 3, memory_gb: 4, transfer_latency_ms: 0}\n")
    monkeypatch.setenv("SKILLROUTE_DEVICES_FILE", str(path))
    settings = Settings()
    assert settings.budgets.devices_file == str(path)
    assert BudgetPlanner(device_table(settings.budgets.devices_file)).profiles["local-cpu"].power_w == 3
    assert BudgetPlanner().profiles["local-cpu"].power_w != 3  # the packaged file, unless told


def test_replies_computed_here_teach_the_local_slowdown_and_mock_ones_do_not() -> None:
    real = spec("real", "/m.gguf", params_b=0.5)
    fake = ExpertSpec(name="fake", base=BaseModelSpec(kind="mock", source="m"))
    planner = BudgetPlanner()
    before = planner.cost(real, 40, 24).latency_s
    instant = Answer(expert="fake", role="expert", text="", prompt_tokens=40, completion_tokens=24, latency_s=0.0)
    planner.observe({"fake": fake}, [instant] * 5)
    assert planner.slowdown.factor() is None and planner.cost(real, 40, 24).latency_s == before
    slow = instant.model_copy(update={"expert": "real", "latency_s": 4 * before})
    planner.observe({"real": real}, [slow] * 5)
    assert planner.cost(real, 40, 24).latency_s == pytest.approx(4 * before)
    plan = planner.plan(PoolView({"real": real}, None, True), "q", [score("real", 0.5)], QueryBudget(), 1, TOKENS)
    assert plan.record().local_slowdown == pytest.approx(4.0)


def test_each_base_model_here_is_costed_by_its_own_recent_replies() -> None:
    """One shared factor, set by the model the profile under-predicts, scaled the other's
    already high prediction further up (the 1.5B's, on this CPU)."""
    slow, fast = spec("slow", "/slow.gguf", params_b=0.5), spec("fast", "/fast.gguf", params_b=1.5)
    persona = fast.model_copy(update={"name": "persona"})  # the same base model: the same speed
    planner = BudgetPlanner()
    before = {s.name: planner.cost(s, 40, 24).latency_s for s in (slow, fast)}
    reading = planner.cost(fast, 40, 0).latency_s
    reply = Answer(expert="slow", role="expert", text="", prompt_tokens=40, completion_tokens=24, latency_s=0.0)
    planner.observe({"slow": slow, "fast": fast}, [reply.model_copy(update={"latency_s": 3 * before["slow"]})] * 5
                    + [reply.model_copy(update={"expert": "fast", "latency_s": before["fast"] / 2})] * 5)
    assert planner.cost(slow, 40, 24).latency_s == pytest.approx(3 * before["slow"])
    # these replies are mostly writing: it is scaled by their factor, reading not below the profile
    fast_now = reading + (before["fast"] - reading) / 2
    assert planner.cost(fast, 40, 24).latency_s == pytest.approx(fast_now) and fast_now < before["fast"]
    assert planner.cost(persona, 40, 24).latency_s == pytest.approx(fast_now)


def test_an_auto_pool_costs_a_lettered_question_as_a_vote_and_free_text_with_its_aggregator() -> None:
    """Under `auto` the vote decides a question with lettered options (pipeline/batch.py): no
    aggregator runs, so none is costed; free text still goes to the aggregator LLM."""
    experts = {n: spec(n, "/m.gguf", params_b=0.5) for n in ("a", "b", "c")}
    pool, planner = PoolView(experts, "a", calibrated=True, aggregation="auto"), BudgetPlanner()
    lettered = "Which is prime?\nA. 4\nB. 7\nC. 9\nD. 12"
    scores = [score(n, 0.6) for n in experts]
    assert planner.aggregation(pool, lettered, TOKENS).latency(3) == 0.0
    assert planner.aggregation(pool, "What is 2+2?", TOKENS).latency(3) > 0.0
    plan = planner.plan(pool, lettered, scores, QueryBudget(), 3, TOKENS)
    assert len(plan.chosen) == 3  # three voters at 0.6 beat one: the weighted-vote quality
    assert plan.decision.latency_s == pytest.approx(sum(c.latency_s for c in plan.candidates))


def knn(name: str, p: float) -> ExpertScore:
    """A k-NN router's score: P(right) and its log-odds weight against 4 options' chance."""
    return expert_score(name, p, p, log_odds_weight(p, 4))


def test_an_expert_below_chance_is_not_added_beside_one_above_it() -> None:
    """The embedded pool's profile: the 1.5B right on 8/16, the 0.5B on 3/16, SmolLM2 on 2/16
    (chance 1/4). Under noisy-or (the aggregator finds any right answer) a loose budget added
    the 0.5B to "What is 17*23?" and the 1.5B aggregating copied its 401; the open-answer vote
    counts the two below chance agreeing and added both. Their votes cannot move the k-NN
    router's vote, so the 1.5B answers alone, as the router's own recruitment has it."""
    experts = {n: spec(n, f"/{n}.gguf", params_b=b) for n, b in (("big", 1.5), ("small", 0.5), ("tiny", 0.135))}
    pool, planner = PoolView(experts, "big", calibrated=True, aggregation="auto"), BudgetPlanner()
    scores = [knn("big", 0.5), knn("small", 0.1875), knn("tiny", 0.125)]
    loose = QueryBudget(latency_s=600.0, energy_j=1e5)
    plan = planner.plan(pool, "What is 17*23?", scores, loose, 3, TOKENS)
    assert plan.chosen == ("big",) and plan.decision.quality == pytest.approx(0.5)
    tight = QueryBudget(latency_s=planner.cost(experts["small"], 60, 64).latency_s * 1.2)
    assert planner.plan(pool, "What is 17*23?", scores, tight, 3, TOKENS).chosen in {("small",), ("tiny",)}
    near = [knn("big", 0.5), knn("small", 0.45), knn("tiny", 0.45)]
    assert len(planner.plan(pool, "What is 17*23?", near, loose, 3, TOKENS).chosen) == 3  # two agreeing outvote one



def test_an_expert_below_chance_is_not_added_beside_three_above_it() -> None:
    """With k=4 and a loose budget the below-chance expert fits beside three above it, but its
    vote moves nothing: the plan of the three is as good and cheaper, so it wins."""
    experts = {n: spec(n, f"/{n}.gguf", params_b=b) for n, b in (("a", 1.5), ("b", 1.5), ("c", 1.5), ("tiny", 0.135))}
    pool, planner = PoolView(experts, "a", calibrated=True, aggregation="auto"), BudgetPlanner()
    scores = [knn("a", 0.6), knn("b", 0.55), knn("c", 0.55), knn("tiny", 0.125)]  # chance: 1/4
    plan = planner.plan(pool, "What is 17*23?", scores, QueryBudget(latency_s=600.0, energy_j=1e5), 4, TOKENS)
    assert plan.chosen == ("a", "b", "c")

@pytest.mark.parametrize("device", ["local-cpu", "rtx4090-workstation", "jetson-agx-orin"])
def test_a_model_on_a_single_device_is_costed_on_that_device_alone(device: str) -> None:
    """No tensor-parallel discount where the profile is one device: a 14B on the CPU used to be
    predicted 2.8x faster than the device cost model says, and faster than a 13.7B."""
    planner, profile = BudgetPlanner(), load_devices()[device]
    costs = [planner.cost(spec("e", "/m.gguf", device, params_b=b), 100, 96) for b in (7.0, 13.7, 13.8, 34.0)]
    for b, cost in zip((7.0, 13.7, 13.8, 34.0), costs, strict=True):
        assert cost.latency_s == pytest.approx(estimate_cost(profile, b, 100, 96).latency_s)
    assert [c.latency_s for c in costs] == sorted(c.latency_s for c in costs)


def test_a_local_gguf_whose_name_gives_no_size_is_costed_at_the_parameters_in_its_file(tmp_path: Path) -> None:
    """The README's own `/models/my-model.gguf` was costed as a 150B-active frontier model
    (674 s for a short prompt), so no budget ever chose it."""
    path = tmp_path / "my-model.gguf"
    path.write_bytes(gguf_bytes({"general.architecture": "llama"}, [("w", (1000, 500), bytes(4 * 500_000))]))
    assert expert_params_b(spec("mine", str(path))) == pytest.approx(0.0005)
    assert expert_params_b(spec("mine", str(path), params_b=3.0)) == 3.0  # an explicit placement first
    assert expert_params_b(spec("gone", str(tmp_path / "gone.gguf"))) == 150.0  # unreadable: the frontier guess


def test_replies_of_a_model_sized_by_a_guess_teach_no_other_model() -> None:
    """Its ratio (a 0.5B's replies against a 150B prediction) is the guess's error, not the
    device's: it made an unrelated 1.5B look ~170x faster than this CPU runs it."""
    guessed, other = spec("guessed", "/nowhere/my-model.gguf"), spec("other", "/o.gguf", params_b=1.5)
    planner = BudgetPlanner()
    before, small = planner.cost(other, 40, 96).latency_s, spec("s", "/s.gguf", params_b=0.5)
    replies = [Answer(expert="guessed", role="expert", text="B", prompt_tokens=p, completion_tokens=8,
                      latency_s=planner.cost(small, p, 8).latency_s) for p in range(60, 120, 10)]
    planner.observe({"guessed": guessed}, replies)
    assert planner.slowdown.factor() is None and planner.cost(other, 40, 96).latency_s == before
    assert not planner.slowdown.empty  # its own runs are kept: stored ones are not fed again after them


def test_the_aggregator_is_costed_as_the_same_model_is_as_an_expert() -> None:
    """A 70B on a server node runs tensor-parallel whatever its role: as the aggregator it was
    costed on one H100 (4.58 s, 3172 J; 2.04 s, 4175 J as an expert)."""
    big = spec("big", "/big.gguf", "h100-server", params_b=70.0)
    planner = BudgetPlanner()
    agg = planner.aggregation(PoolView({"big": big}, "big", calibrated=True), "What is 2+2?", TOKENS)
    prompt = text_tokens(aggregation_prompt("What is 2+2?", [])) + TEMPLATE_TOKENS
    for m in (2, 3):
        reads = planner.cost(big, prompt + m * (TOKENS.expert_max_tokens + ANSWER_TOKENS_EXTRA),
                             TOKENS.aggregator_max_tokens)
        assert (agg.latency(m), agg.energy(m)) == pytest.approx((reads.latency_s, reads.energy_j))
