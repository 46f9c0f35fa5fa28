"""Budgets in the service: the router's scores and each expert's placement in, the subset out.

Per query: every scored expert becomes a `Candidate` whose quality is the router's estimate
(the k-NN router's p̂ as it is; a Symbolic-MoE weight scaled by `quality_from_weights`) and
whose cost is predicted on the device its `ExpertSpec.placement` names, by the cost model the
replay backend and the benches use (`experts/cost_model.py` over `experts/devices.py`), for
this prompt and the pool's output-token limit (a replay expert: its recorded chain of thought).
Predicting the whole `max_tokens` makes the prediction an upper bound whenever an expert stops
early. With an aggregator LLM, its cost (it reads every answer, then writes) is the aggregation
term; a pool that aggregates by vote pays nothing to aggregate, nor does an `auto` pool's
lettered question, which the vote decides (`vote_decides`). Every subset is scored by the
weighted-vote quality (two members agreeing carry the day, else the likeliest member's answer
stands), the aggregator LLM's too, and an expert whose vote cannot move the router's vote (below
chance) adds nothing beside others (`vote_quality`). Noisy-or (the aggregator finds any
member's right answer) is what the aggregators measured here do not do: on 60 arithmetic
questions the 1.5B alone scored 90.0 %, with the 0.5B beside it and the 1.5B aggregating 85.0 %
(README, "Live quality"), and on MMLU it followed the 0.5B's wrong letter. Under noisy-or a
budget added the 0.5B (and SmolLM2, where it fitted) to the 1.5B for "What is 17*23?", and on
the CI machine the reply was the 0.5B's "401".

Placement: the spec's device, else its backend's default device (`experts.traits`: this
machine's CPU for the models we run; a recorded model's H100 servers of its own, where the replay
backend costs its replies). Experts on one
device share it: on the embedded pool every expert runs on this CPU, so a subset's latency is
the sum of its members' plus aggregation (`_limits`). This CPU is shared with other work,
so its profile is scaled online by what the service's own recent llama.cpp generations
took against their prediction (`experts.calibration.Slowdown`, a high quantile): each base
model's own once it has replied a few times, the device's until then. vLLM's replies teach it
nothing: each is given its whole batch's wall time (`BackendTraits.batch_timed`).

Measured cost: the wall time of the expert and aggregation stages, and energy as the local
CPU profile's `power_w` x that time: an estimate, since no power counters are readable here.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from experts.calibration import Run, Slowdown, slowed
from experts.cost_model import ModelCost, ModelSize, gguf_size, name_size, parse_model_size
from experts.devices import CostEstimate, DeviceProfile, load_devices
from experts.traits import LOCAL_DEVICE, traits
from experts.types import ExpertSpec
from experts.workers import WorkerSpec
from orchestrator.aggregation.prompt import aggregation_prompt
from orchestrator.aggregation.vote import moves_a_vote, vote_decides
from orchestrator.budgets.solver import (
    AggregationCost,
    Budget,
    BudgetDecision,
    Candidate,
    QualityModel,
    quality_from_weights,
    solve,
    weighted_vote,
    weighted_vote_above,
)
from orchestrator.domain import Answer, BudgetCandidate, BudgetRecord, ExpertScore, QueryBudget, milliseconds

TEMPLATE_TOKENS = 16  # chat template tokens around a system prompt and a user turn
ANSWER_TOKENS_EXTRA = 8  # "Response i:" and spacing around each answer the aggregator reads


class Timed(Protocol):
    """What a reply says of its cost: a query's `Answer`, a profiling run's `Generation`."""

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def latency_s(self) -> float: ...


@lru_cache(maxsize=4)
def device_table(path: str | None = None) -> dict[str, DeviceProfile]:
    """Device profiles by name, from `path` (the `budgets.devices_file` setting) or the packaged file."""
    return load_devices(path)


@dataclass(frozen=True)
class TokenLimits:
    expert_max_tokens: int
    aggregator_max_tokens: int


@dataclass(frozen=True)
class Site:
    """Where an expert's replies are costed (a device profile), and which device it shares:
    experts with equal slots run one after another, different slots in parallel."""

    device: str
    slot: str


@dataclass(frozen=True)
class PoolView:
    """The part of the pool a plan needs: specs (with placements), sites, the aggregator."""

    experts: Mapping[str, ExpertSpec]
    aggregator: str | None
    calibrated: bool  # the router's suitability is P(correct) (k-NN), not a relative weight
    aggregation: str = "llm"  # or "vote": no aggregator LLM; or "auto": none for lettered questions
    sites: Mapping[str, Site] = field(default_factory=dict)  # by expert; absent: as its placement says

    def site(self, name: str) -> Site:
        return self.sites.get(name) or site(self.experts[name])


@dataclass(frozen=True)
class BudgetPlan:
    budget: QueryBudget
    k_max: int
    decision: BudgetDecision
    candidates: list[Candidate]
    local_slowdown: float | None = None  # the device's online correction (a model with replies: its own)

    @property
    def chosen(self) -> tuple[str, ...]:
        return self.decision.chosen

    def record(self) -> BudgetRecord:
        """The decision's budget part: the limits, the subset, its predicted cost."""
        b, d = self.budget, self.decision
        return BudgetRecord(
            latency_ms=milliseconds(b.latency_s), energy_j=b.energy_j,
            k_max=self.k_max, from_key=list(b.from_key), chosen=list(d.chosen), predicted_quality=d.quality,
            predicted_latency_s=d.latency_s, predicted_energy_j=d.energy_j, solver_nodes=d.nodes,
            local_slowdown=self.local_slowdown, candidates=[_candidate(c) for c in self.candidates])


def _candidate(c: Candidate) -> BudgetCandidate:
    return BudgetCandidate(expert=c.name, quality=c.quality, latency_s=c.latency_s, energy_j=c.energy_j,
                           device=c.device)


def measured(record: BudgetRecord, stages_s: float, power_w: float | None) -> BudgetRecord:
    """The record with what the batch really took: its stages' wall time, and energy as the
    local device's power over that time (no power counter is readable here: an estimate); none
    where the devices file has no local profile (it read 0 J, on a basis no profile gave)."""
    if power_w is None:
        return record.model_copy(update={"measured_latency_s": stages_s})
    return record.model_copy(update={
        "measured_latency_s": stages_s, "measured_energy_j": power_w * stages_s,
        "measured_energy_basis": f"{LOCAL_DEVICE} power_w x measured wall time (estimate)"})


def text_tokens(text: str) -> int:
    """A generous token count, as tokenizers split text: a word is a token and then one more
    every 4 letters; a digit, a symbol, a newline, another blank not before a word a token each
    (SmolLM2 and Qwen2.5 split every digit, and " 24" is three); a character past ASCII a token a
    UTF-8 byte (no byte-level tokenizer takes more; SmolLM2 writes Chinese in ~2 a character).
    Counted as 3 characters a token, half the replay corpus's questions were undercounted, up to
    2.7 times, and a Chinese query's plan said 396 tokens for its 2,310 (its reply 78 s against a
    budget of 11). On two draws of 800 of its questions this count is under the larger of the two
    tokenizers' for one question (by under 1%) and over it by ~58% on average: plans err long."""
    raw = text.encode("utf-8", "surrogatepass")
    plain = raw.translate(None, _PAST_ASCII).decode("ascii")
    letters = len(_LETTER.findall(plain))
    counted = len(_WORD.findall(plain)) + len(_SYMBOL.findall(plain)) + len(_LONE_BLANK.findall(plain))
    return counted + math.ceil(letters / 4) + len(raw) - len(plain)


_PAST_ASCII = bytes(range(128, 256))
_LETTER, _WORD = re.compile(r"[A-Za-z]"), re.compile(r"[A-Za-z]+")
_SYMBOL, _LONE_BLANK = re.compile(r"[^A-Za-z\s]"), re.compile(r"\n|[^\S\n](?![A-Za-z])")


def expert_size(spec: ExpertSpec) -> ModelSize:
    """Parameters (total, active): the placement's figure, else read from the model's name, else
    counted in its GGUF file (a local `/models/my-model.gguf`), else the frontier guess (flagged
    `estimate`: a remote or HF model whose name says nothing)."""
    if spec.placement.params_b is not None:
        return ModelSize(spec.placement.params_b * 1e9, spec.placement.params_b * 1e9, "known")
    name = spec.base.model or spec.base.source
    named = name_size(name)
    if named is not None and named.source != "estimate":
        return named
    return gguf_size(spec.base.source) or parse_model_size(name)  # a file's count beats a guess


def expert_params_b(spec: ExpertSpec) -> float:
    return expert_size(spec).active_params / 1e9


def device_name(spec: ExpertSpec, worker: WorkerSpec | None = None) -> str:
    """The device profile an expert is costed on: its placement's, else its worker's, else its
    backend's default (a kind with devices of its own, a recording, keeps its default)."""
    if spec.placement.device is not None:
        return spec.placement.device
    t = traits(spec.base)
    return worker.device if worker is not None and not t.own_device else t.default_device


def slot(spec: ExpertSpec) -> str:
    """The physical device off any worker: experts with equal slots run one after another."""
    instance, t = spec.placement.instance, traits(spec.base)
    if instance is None and t.served_elsewhere:
        instance = spec.base.key  # its server's (replies to one server's model are planned in turn)
    elif instance is None and spec.placement.device is None and t.own_device:
        instance = spec.name  # e.g. a recorded model, served by servers of its own
    return device_name(spec) + (f"#{instance}" if instance else "")


def site(spec: ExpertSpec, worker: WorkerSpec | None = None) -> Site:
    """An expert is costed on its device (`device_name`) and shares its worker's slot: a worker
    runs its stages one after another, whatever device each is costed on. Two kinds keep a slot
    of their own (`slot`): an expert served elsewhere (an OpenAI-compatible server) runs beside
    its worker's other stages (`executor.execute`), and a recording's replies are looked up, their
    times simulated on servers of their own."""
    device, t = device_name(spec, worker), traits(spec.base)
    if worker is not None and not t.own_device and not t.served_elsewhere:
        return Site(device, worker.name)
    return Site(device, slot(spec))


class BudgetPlanner:
    """Chooses a query's experts within its budget (see the module doc)."""

    def __init__(self, devices: Mapping[str, DeviceProfile] | None = None, slowdown: Slowdown | None = None):
        self.profiles: dict[str, DeviceProfile] = dict(devices if devices is not None else device_table())
        self.power_w = self.profiles[LOCAL_DEVICE].power_w if LOCAL_DEVICE in self.profiles else None
        self.slowdown = slowdown or Slowdown()

    def observe(self, experts: Mapping[str, ExpertSpec], replies: Sequence[Answer],
                sites: Mapping[str, Site] | None = None) -> None:
        """Learn the local slowdown from a batch's replies (see `record`)."""
        where = sites or {}
        self.record([(experts[a.expert], where.get(a.expert), a) for a in replies if a.expert in experts])

    def record(self, replies: Iterable[tuple[ExpertSpec, Site | None, Timed]]) -> None:
        """Learn the local slowdown, the device's and each base model's, from replies (each with
        its expert and site) computed on this machine (not mock or remote): a query's, or a
        profiling run's, so each model is costed by its own runs before its first query."""
        if LOCAL_DEVICE not in self.profiles:
            return
        runs = defaultdict[str, list[Run]](list)
        guessed: set[str] = set()  # sized by a guess: its ratios say how wrong the guess is, not the device
        for spec, where, r in replies:
            if self.learns_from(spec, where):
                size = expert_size(spec)
                if size.source == "estimate":
                    guessed.add(spec.base.key)
                runs[spec.base.key].append(Run(size.active_params / 1e9, r.prompt_tokens, r.completion_tokens,
                                               r.latency_s))
        for model, timed in runs.items():
            self.slowdown.observe(self.profiles[LOCAL_DEVICE], timed, model, device_wide=model not in guessed)

    def learns_from(self, spec: ExpertSpec, where: Site | None = None) -> bool:
        """Whether `spec`'s replies at its site teach the local slowdown (`record`)."""
        return LOCAL_DEVICE in self.profiles and _computed_here(spec, where or site(spec))

    def plan(self, pool: PoolView, text: str, scores: Sequence[ExpertScore], budget: QueryBudget,
             k_max: int, tokens: TokenLimits) -> BudgetPlan:
        """The exact best subset of the scored experts; raises InfeasibleBudget if none fits."""
        cands = self.candidates(pool, text, scores, tokens)
        agg = self.aggregation(pool, text, tokens)
        decision = solve(cands, Budget(budget.latency_s, budget.energy_j, k_max), vote_quality(cands, scores), agg)
        return BudgetPlan(budget, k_max, decision, cands, self.slowdown.factor())

    def candidates(self, pool: PoolView, text: str, scores: Sequence[ExpertScore],
                   tokens: TokenLimits) -> list[Candidate]:
        quality = _quality(scores, pool.calibrated)
        cands = []
        for s in scores:
            spec = pool.experts[s.name]
            output = traits(spec.base).output_tokens(min(tokens.expert_max_tokens, spec.sampling.max_tokens))
            where = pool.site(s.name)
            cost = self.cost(spec, _prompt_tokens(spec, text), output, where)
            cands.append(Candidate(s.name, quality[s.name], cost.latency_s, cost.energy_j, where.slot))
        # of equally good subsets the solver keeps the smaller, then cheaper, then the first: best first
        return sorted(cands, key=lambda c: (-c.quality, c.latency_s, c.energy_j, c.name))

    def cost(self, spec: ExpertSpec, prompt_tokens: int, output_tokens: int, where: Site | None = None
             ) -> CostEstimate:
        """One reply of `spec` at its site (tensor-parallel where its weights need it)."""
        return ModelCost(expert_size(spec), self.device(spec, where)).estimate(prompt_tokens, output_tokens)

    def reply_cost(self, spec: ExpertSpec, text: str, max_tokens: int, where: Site | None = None) -> CostEstimate:
        """One reply of `spec` to `text` (with its persona and chat template) at its site."""
        output = traits(spec.base).output_tokens(max_tokens)
        return self.cost(spec, _prompt_tokens(spec, text), output, where)

    def device(self, spec: ExpertSpec, where: Site | None = None) -> DeviceProfile:
        """The profile `spec` is costed on; this machine's scaled by its base model's recent
        slowdown, reading and writing apart where its runs tell them apart (`Slowdown.factors`:
        one law does not fit every model here)."""
        name = (where or site(spec)).device
        if name not in self.profiles:
            raise KeyError(f"expert {spec.name!r} is placed on unknown device {name!r}")
        factors = self.slowdown.factors(spec.base.key) if name == LOCAL_DEVICE else None
        return self.profiles[name] if factors is None else slowed(self.profiles[name], *factors)

    def aggregation(self, pool: PoolView, text: str, tokens: TokenLimits) -> AggregationCost:
        """The aggregator reads the question and every answer, then writes its own."""
        # an `auto` vote that falls back to the aggregator (an answer with no letter) is not costed
        if vote_decides(pool.aggregation, text) or pool.aggregator is None or pool.aggregator not in pool.experts:
            return AggregationCost()
        spec, where = pool.experts[pool.aggregator], pool.site(pool.aggregator)
        prompt = text_tokens(aggregation_prompt(text, [])) + _prompt_tokens(spec, "")
        answer = tokens.expert_max_tokens + ANSWER_TOKENS_EXTRA
        writes = min(tokens.aggregator_max_tokens, spec.sampling.max_tokens)  # as `ExpertSpec.request` caps it
        # costed as `cost` costs it as an expert: a 70B on a server node runs tensor-parallel here too
        return AggregationCost.from_estimates(self.cost(spec, prompt, writes, where),
                                              self.cost(spec, prompt + answer, writes, where))


def vote_quality(cands: Sequence[Candidate], scores: Sequence[ExpertScore]) -> QualityModel:
    """The weighted-vote quality, where an expert whose answer cannot move the vote
    (`moves_a_vote`: for the k-NN router, an estimate at or below chance) adds nothing beside
    the others: the open-answer model counts any two agreeing, so it added the embedded pool's
    two experts below chance beside the 1.5B (0.51 against 0.50) for the aggregator to read.
    Alone such an expert is worth its estimate, so it is still chosen when nothing else fits."""
    moving = {s.name for s in scores if moves_a_vote(s)}
    below = [c.quality for c in cands if c.name not in moving]
    if not below or not moving or min(c.quality for c in cands if c.name in moving) <= max(below):
        return weighted_vote([c.quality for c in cands])  # no floor between them to draw
    return weighted_vote_above([c.quality for c in cands], max(below))


def _computed_here(spec: ExpertSpec, where: Site) -> bool:
    """Whether a reply's time is this machine's compute for that reply alone: a batch's wall
    time (`batch_timed`) given to each of its replies would scale every reply to the longest."""
    t = traits(spec.base)
    return where.device == LOCAL_DEVICE and t.computes_here and not t.batch_timed


def _quality(scores: Sequence[ExpertScore], calibrated: bool) -> dict[str, float]:
    """The k-NN router's suitability is a calibrated P(correct); Symbolic-MoE's weights are not."""
    if calibrated:
        return {s.name: min(max(s.suitability, 0.0), 1.0) for s in scores}
    return quality_from_weights(scores)


def _prompt_tokens(spec: ExpertSpec, text: str) -> int:
    return text_tokens((spec.system_prompt or "") + text) + TEMPLATE_TOKENS
