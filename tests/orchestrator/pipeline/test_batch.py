"""A batch across three workers: devices run at once, a query aggregates as soon as its own
answers are in, and a failure (an error, a timeout) stays with its query, whose next-ranked
expert stands in. Mock experts, pinned to workers declared in a devices file; their faults
and hand-offs are events, so nothing here waits on a clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, BudgetCandidate, BudgetRecord, Decision, Outcome
from orchestrator.pools.schema import AggregatorConfig
from orchestrator.routing.recruit import score
from orchestrator.settings import BudgetSettings
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

PACKAGED = Path(__file__).resolve().parents[3] / "experts" / "devices.yaml"
WORKERS = "\nworkers:\n" + "".join(f"  - {{name: w{i}, device: local-cpu, memory_gb: 4}}\n" for i in (1, 2, 3))
EXPERTS = {"alpha": ("m1", "w1"), "beta": ("m2", "w2"), "gamma": ("m3", "w3"), "delta": ("m4", "w1")}
WAIT_S = 20  # an event not set by then means the order under test did not happen


class Faults:
    """What each mock base does besides answering, keyed by a marker in the question."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(3, timeout=WAIT_S)
        self.aggregated = threading.Event()

    def __call__(self, base: str, request: GenerationRequest) -> str | None:
        text = "\n".join(m.content for m in request.messages)
        if "TOGETHER" in text and "Response 1" not in text:
            self.barrier.wait()  # breaks (an error) unless three devices run at once
        if "FAIL" in text and base == "m2":
            return "boom: m2 cannot answer this"
        if "AFTER" in text and base == "m3":
            return None if self.aggregated.wait(WAIT_S) else "the other query was never aggregated"
        if "AFTER" in text and "Response 1" in text and "m3" not in text:
            self.aggregated.set()  # an aggregation of the query that did not wait for m3
        return None


@pytest.fixture
def service(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[SkillRoute, Faults]]:
    devices = tmp_path / "devices.yaml"
    devices.write_text(PACKAGED.read_text() + WORKERS)
    faults = Faults()

    def slow(request: GenerationRequest) -> float:  # delta takes a second on SLOW: past its timeout
        return 1.0 if any("SLOW" in m.content for m in request.messages) else 0.0

    def mocks(spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, fault=lambda r: faults(spec.source, r), delay_s=slow if spec.source == "m4" else 0)

    experts = [ExpertSpec(name=n, base=BaseModelSpec(kind="mock", source=b), placement=ExpertPlacement(worker=w),
                          timeout_s=0.05 if n == "delta" else None) for n, (b, w) in EXPERTS.items()]
    settings = quiet_settings(tmp_path / "data", budgets=BudgetSettings(devices_file=str(devices)))
    c = SkillRoute(settings, small_pool(experts), factory=mocks, embedder=embedder)
    c.start()
    yield c, faults
    c.close()


def decided(recruited: list[str], ranked: list[str], aggregator: str = "alpha") -> Decision:
    scores = [score(n, 1.0 - i / 10, 0.5, 1.0 - i / 10) for i, n in enumerate(ranked)]
    return Decision.made("symbolic", "topk", 0, [], scores, recruited, aggregator)


def answer(c: SkillRoute, *queries: tuple[str, Decision]) -> list[Outcome]:
    asks = [Ask(text=t, k=len(d.recruited)) for t, d in queries]
    return c.pipeline.answer(c.pool.snapshot, asks, [d for _, d in queries])


def test_experts_run_on_their_own_workers_and_the_workers_run_at_once(service) -> None:  # type: ignore[no-untyped-def]
    c, _ = service
    assert c.pool.placement() == {n: w for n, (_, w) in EXPERTS.items()}
    (out,) = answer(c, ("TOGETHER: what is 2+2?", decided(["alpha", "beta", "gamma"], ["alpha", "beta", "gamma"])))
    assert out.error is None and out.decision.failures == []  # the barrier held: three devices at once
    assert [d.worker for d in out.decision.devices] == ["w1", "w2", "w3"]
    assert all(d.measured_s is not None and d.predicted_s > 0 for d in out.decision.devices)
    assert [a.role for a in out.answers] == ["expert", "expert", "expert", "aggregator"]
    assert c.fleet["w2"].resident() == {"mock:m2"} and c.fleet["w3"].resident() == {"mock:m3"}


def test_a_query_aggregates_as_soon_as_its_own_answers_are_in(service) -> None:  # type: ignore[no-untyped-def]
    c, faults = service
    quick = ("AFTER quick", decided(["alpha", "beta"], ["alpha", "beta"]))
    waits = ("AFTER waits", decided(["alpha", "gamma"], ["alpha", "gamma"]))  # gamma waits for quick's aggregation
    first, second = answer(c, quick, waits)
    assert faults.aggregated.is_set() and first.error is None and second.error is None
    assert second.decision.failures == [] and second.answers[-1].role == "aggregator"


def test_a_failed_expert_fails_only_its_answer_and_the_next_ranked_stands_in(service) -> None:  # type: ignore[no-untyped-def]
    c, _ = service
    bad = ("FAIL: what is 3+5?", decided(["alpha", "beta"], ["beta", "alpha", "gamma", "delta"]))
    good = ("what is 3+5?", decided(["alpha", "beta"], ["beta", "alpha", "gamma", "delta"]))
    failed, fine = answer(c, bad, good)
    assert [(f.expert, f.role) for f in failed.decision.failures] == [("beta", "expert")]
    assert "boom" in failed.decision.failures[0].error and failed.decision.fallbacks == ["gamma"]
    assert [a.expert for a in failed.answers] == ["alpha", "gamma", "alpha"] and failed.error is None
    assert fine.decision.failures == [] and [a.expert for a in fine.answers] == ["alpha", "beta", "alpha"]


def test_an_expert_ranked_at_admission_but_gone_since_does_not_stand_in(service) -> None:  # type: ignore[no-untyped-def]
    c, _ = service  # "ghost" was removed after the query was ranked: the next one present stands in
    (out,) = answer(c, ("FAIL: what is 4+4?", decided(["alpha", "beta"], ["beta", "alpha", "ghost", "gamma"])))
    assert out.decision.fallbacks == ["gamma"] and out.error is None
    assert [a.expert for a in out.answers] == ["alpha", "gamma", "alpha"]


def test_a_query_whose_own_step_raises_fails_alone_and_the_batch_goes_on(service) -> None:  # type: ignore[no-untyped-def]
    """A competitor the pool lacks raises as its job is sent: that query fails naming it, and the
    query beside it is answered (before, the whole batch failed with its error)."""
    c, _ = service
    ghost = Decision.made("symbolic", "topk", 0, [], [], ["alpha"], None, competitors=["ghost"], competition=True)
    lost, fine = answer(c, ("what is 5+5?", ghost), ("what is 6+6?", decided(["alpha", "beta"], ["alpha", "beta"])))
    assert lost.error == "internal error: KeyError: 'ghost'" and fine.error is None and fine.text


def test_a_reply_whose_handling_raises_fails_its_query_alone(service, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Scoring a competed query reads its recording's gold answer; a recording that will not read
    (a half-written file) fails that query alone. Before, its batch, and the window behind it,
    waited for good."""
    c, _ = service

    def unreadable(base: BaseModelSpec, text: str) -> str | None:
        raise OSError("the recording is half-written")

    monkeypatch.setattr("orchestrator.pipeline.batch.known_answer", unreadable)
    competed = Decision.made("symbolic", "topk", 0, [], [], ["alpha"], None, competitors=["beta"], competition=True)
    other = decided(["alpha", "gamma"], ["alpha", "gamma"])
    lost, fine = answer(c, ("what is 7+7?", competed), ("what is 8+8?", other))
    assert lost.error == "internal error: OSError: the recording is half-written"
    assert fine.error is None and fine.text and [a.role for a in fine.answers] == ["expert", "expert", "aggregator"]


def test_a_timeout_is_a_failure_of_that_answer_alone(service) -> None:  # type: ignore[no-untyped-def]
    c, _ = service
    (out,) = answer(c, ("SLOW: what is 1+1?", decided(["delta", "alpha"], ["delta", "alpha", "beta"])))
    assert [(f.expert, f.error) for f in out.decision.failures] == [("delta", "timed out after 0.05 s")]
    assert out.decision.fallbacks == ["beta"] and out.error is None


def test_a_query_left_with_no_answer_fails_alone_naming_why(service) -> None:  # type: ignore[no-untyped-def]
    c, _ = service
    direct = Decision.made("direct", "topk", 0, [], [], ["beta"], None)  # a named expert: no stand-in
    lost, fine = answer(c, ("FAIL: hello", direct), ("hello", decided(["alpha"], ["alpha"])))
    assert lost.error == "every expert failed: beta: boom: m2 cannot answer this" and lost.answers == []
    assert fine.error is None and fine.text


def test_an_aggregator_that_fails_leaves_the_best_ranked_answer(service) -> None:  # type: ignore[no-untyped-def]
    c, _ = service
    (out,) = answer(c, ("FAIL: which?", decided(["alpha", "gamma"], ["gamma", "alpha"], aggregator="beta")))
    assert [(f.expert, f.role) for f in out.decision.failures] == [("beta", "aggregator")]
    assert out.text == out.answers[1].text and out.answers[1].expert == "gamma"


def test_the_aggregator_reads_the_best_ranked_answer_first(service) -> None:  # type: ignore[no-untyped-def]
    c, _ = service
    (out,) = answer(c, ("which is it?", decided(["gamma", "alpha"], ["alpha", "gamma"], aggregator="beta")))
    texts = {a.expert: a.text for a in out.answers if a.role == "expert"}
    prompt = "\n".join(m.content for m in c.fleet["w2"].backend(BaseModelSpec(kind="mock", source="m2"))
                       .requests[-1].messages)  # type: ignore[attr-defined]
    assert prompt.index(texts["alpha"]) < prompt.index(texts["gamma"])  # drawn second, ranked first


def test_one_expert_drawn_k_times_is_not_aggregated(service) -> None:  # type: ignore[no-untyped-def]
    c, _ = service
    (out,) = answer(c, ("what is 6*7?", decided(["alpha", "alpha", "alpha"], ["alpha", "beta"], aggregator="beta")))
    assert [a.role for a in out.answers] == ["expert"] * 3 and out.text == out.answers[0].text


LETTERED = "Which gas do plants take in?\nA. Oxygen\nB. Carbon dioxide\nReply with 'Answer: <letter>'."


def test_auto_aggregation_votes_on_lettered_answers_and_asks_the_aggregator_otherwise(
        tmp_path: Path, embedder: Embedder) -> None:
    replies = {"m1": "Answer: B, as photosynthesis fixes carbon.", "m2": "Answer: A"}
    pool = small_pool([mock_expert("alpha", "m1"), mock_expert("beta", "m2")])
    pool = pool.model_copy(update={"aggregator": AggregatorConfig(mode="auto", fixed="beta")})
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder,
                   factory=lambda spec: MockBackend(spec.key, answer=replies[spec.source]))
    c.start()
    try:
        voted, free = answer(c, (LETTERED, decided(["beta", "alpha"], ["alpha", "beta"])),
                             ("What is 2+2?", decided(["beta", "alpha"], ["alpha", "beta"], aggregator="beta")))
    finally:
        c.close()
    assert voted.text == replies["m1"] and [a.role for a in voted.answers] == ["expert", "expert"]  # alpha outweighs
    assert [a.role for a in free.answers] == ["expert", "expert", "aggregator"]
    assert free.text == replies["m2"]  # the aggregator beta's, where the vote would take alpha's


def test_under_a_budget_a_stand_in_must_keep_the_whole_query_within_it(service) -> None:  # type: ignore[no-untyped-def]
    """beta fails. gamma (0.9 s) fits the 1.6 s budget alone, but starts only once beta has
    failed (1.0 s); delta would run after alpha on w1 (the wait for beta overlapping alpha's
    run: 1.7 s). Neither keeps the query within 1.6 s, so none stands in, where before gamma
    did, for 1.9 s."""
    c, _ = service
    costs = {"alpha": (1.0, "w1"), "beta": (1.0, "w2"), "gamma": (0.9, "w3"), "delta": (0.7, "w1")}
    cands = [BudgetCandidate(expert=n, quality=0.5, latency_s=lat, energy_j=1.0, device=d)
             for n, (lat, d) in costs.items()]
    budget = BudgetRecord(latency_ms=1600, energy_j=None, k_max=2, from_key=[], chosen=["alpha", "beta"],
                          predicted_quality=0.7, predicted_latency_s=1.0, predicted_energy_j=2.0, solver_nodes=1,
                          candidates=cands)
    d = decided(["alpha", "beta"], list(costs)).model_copy(update={"mode": "budget", "budget": budget})
    (out,) = answer(c, ("FAIL: what is 9+9?", d))
    assert [f.expert for f in out.decision.failures] == ["beta"] and out.decision.fallbacks == []
    assert [a.expert for a in out.answers] == ["alpha"] and out.error is None


def test_under_a_budget_a_stand_in_starts_no_earlier_than_now(service) -> None:  # type: ignore[no-untyped-def]
    """delta, predicted at 10 ms, times out at 50 ms; gamma (20 ms) would end within the 40 ms
    budget had delta failed on time, and stood in, ending past it."""
    c, _ = service
    costs = {"delta": (0.01, "w1"), "gamma": (0.02, "w3")}
    cands = [BudgetCandidate(expert=n, quality=0.5, latency_s=lat, energy_j=1.0, device=d)
             for n, (lat, d) in costs.items()]
    budget = BudgetRecord(latency_ms=40, energy_j=None, k_max=1, from_key=[], chosen=["delta"],
                          predicted_quality=0.5, predicted_latency_s=0.01, predicted_energy_j=1.0, solver_nodes=1,
                          candidates=cands)
    d = decided(["delta"], list(costs)).model_copy(update={"mode": "budget", "budget": budget})
    (out,) = answer(c, ("SLOW: what is 9+9?", d))
    assert [f.expert for f in out.decision.failures] == ["delta"] and out.decision.fallbacks == []


@pytest.mark.parametrize(("mode", "aggregator"), [("vote", "beta"), ("llm", "gone")])
def test_a_reply_no_vote_or_aggregator_settles_is_the_best_ranked_answer(
        mode: str, aggregator: str, tmp_path: Path, embedder: Embedder) -> None:
    """A vote that finds no letter, and an aggregator gone from the pool since admission, leave
    the reply to the best-ranked answer, as a failed aggregator does; not to draw 0's, which in
    sample mode is whichever expert was drawn first."""
    replies = {"m1": "Twelve squared is 144.", "m2": "It is 144."}
    pool = small_pool([mock_expert("alpha", "m1"), mock_expert("beta", "m2")])
    pool = pool.model_copy(update={"aggregator": AggregatorConfig(mode=mode)})  # type: ignore[arg-type]
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder,
                   factory=lambda spec: MockBackend(spec.key, answer=replies[spec.source]))
    c.start()
    try:
        (out,) = answer(c, ("What is 12*12?", decided(["beta", "alpha"], ["alpha", "beta"], aggregator=aggregator)))
    finally:
        c.close()
    assert out.error is None and [a.role for a in out.answers] == ["expert", "expert"]
    assert out.text == replies["m1"]  # alpha's: drawn second, ranked first


def test_a_budgeted_auto_query_on_letters_is_settled_by_the_vote_its_plan_paid_for(
        tmp_path: Path, embedder: Embedder) -> None:
    """Its plan costed no aggregator (the vote decides lettered questions under `auto`), yet an
    answer without a letter sent it to the aggregator: ~15 s on a 9.6 s budget on the embedded
    pool. The lettered answers vote; with none, the best-ranked answer. Unbudgeted, as before."""
    replies = {"m1": "Answer: A", "m2": "Answer: B, carbon dioxide.", "m3": "Carbon dioxide.", "m4": "CO2."}
    pool = small_pool([mock_expert(n, b) for n, b in (("alpha", "m1"), ("beta", "m2"), ("gamma", "m3"),
                                                      ("delta", "m4"))])
    pool = pool.model_copy(update={"aggregator": AggregatorConfig(mode="auto", fixed="alpha")})
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder,
                   factory=lambda spec: MockBackend(spec.key, answer=replies[spec.source]))
    budget = BudgetRecord(latency_ms=9600, energy_j=None, k_max=3, from_key=[], chosen=[], predicted_quality=0.7,
                          predicted_latency_s=9.1, predicted_energy_j=1.0, solver_nodes=1, candidates=[])
    mixed = decided(["alpha", "beta", "gamma"], ["beta", "alpha", "gamma"])
    unlettered = decided(["gamma", "delta"], ["delta", "gamma"])
    budgeted = [d.model_copy(update={"mode": "budget", "budget": budget}) for d in (mixed, unlettered)]
    c.start()
    try:
        free, paid, none = answer(c, (LETTERED, mixed), *((LETTERED, d) for d in budgeted))
    finally:
        c.close()
    assert [a.role for a in free.answers][-1] == "aggregator"
    assert [a.role for a in paid.answers] == ["expert"] * 3 and paid.text == replies["m2"]  # beta outweighs
    assert [a.role for a in none.answers] == ["expert"] * 2 and none.text == replies["m4"]  # delta ranked first


def three_experts(tmp_path: Path, embedder: Embedder, replies: dict[str, str], mode: str) -> SkillRoute:
    pool = small_pool([mock_expert(n, b) for n, b in (("alpha", "m1"), ("beta", "m2"), ("gamma", "m3"))])
    pool = pool.model_copy(update={"aggregator": AggregatorConfig(mode=mode, fixed="gamma")})  # type: ignore[arg-type]
    return SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder,
                      factory=lambda spec: MockBackend(spec.key, answer=replies[spec.source]))


@pytest.mark.parametrize(("mode", "question", "settled"), [("llm", "What is 12*12?", "m1"), ("auto", LETTERED, "m2")])
def test_an_aggregator_prompt_over_its_context_window_is_never_sent(
        mode: str, question: str, settled: str, tmp_path: Path, embedder: Embedder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Admission checks the question alone; with the answers, the aggregator's prompt overflowed
    its window (602 tokens on a 512 one), and the generation failed only after loading its model.
    Not sent: the aggregator's failure, and the vote where it decides, else the best-ranked answer."""
    replies = {"m1": "I am not sure.", "m2": "Answer: B", "m3": "Answer: A, the aggregator's."}
    monkeypatch.setattr("experts.traits.prompt_tokens", lambda spec, text, options: len(text.split()))
    c = three_experts(tmp_path, embedder, replies, mode)
    c.start()
    try:
        small = ExpertSpec(name="gamma", base=BaseModelSpec(kind="llamacpp", source="m3", n_ctx=128))
        snapshot = replace(c.pool.snapshot, experts={**c.pool.snapshot.experts, "gamma": small})
        d = decided(["beta", "alpha"], ["alpha", "beta"], aggregator="gamma")
        (out,) = c.pipeline.answer(snapshot, [Ask(text=question, k=2)], [d])
    finally:
        c.close()
    assert [(f.expert, f.role) for f in out.decision.failures] == [("gamma", "aggregator")]
    assert "over its context window of 128 tokens" in out.decision.failures[0].error
    assert out.error is None and [a.role for a in out.answers] == ["expert", "expert"]
    assert out.text == replies[settled]  # llm: alpha's, ranked first; auto: beta's, the one letter given


def test_a_competition_on_free_text_is_scored_on_its_answers_not_their_first_letter(
        tmp_path: Path, embedder: Embedder) -> None:
    """Every letter A-P counted as an option: "Answer: I think 391" was a pick of "I", and two
    such answers outvoted a plain "Answer: 391", marked wrong though all three say 391."""
    replies = {"m1": "Answer: I think 391", "m2": "Answer: I believe it is 391", "m3": "Answer: 391"}
    c = three_experts(tmp_path, embedder, replies, "llm")
    competed = Decision.made("symbolic", "topk", 0, [], [], ["alpha"], None, competitors=["beta", "gamma"],
                             competition=True)
    c.start()
    try:
        (out,) = answer(c, ("What is 17*23?", competed))
    finally:
        c.close()
    assert out.decision.competition_scores == {"alpha": 1.0, "beta": 1.0, "gamma": 1.0}
