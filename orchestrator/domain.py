"""What a query is, the decision made for it, its answers and its outcome, and their errors.

The leaf of the service: it imports nothing of skillroute, and everything else takes these
types from here. `Decision` is the one record of a routing decision: the pipeline makes it,
the store keeps it as it is (`routing_decisions.record`), and every reply that shows a decision
— the REST reply, `/v1/routes`, the OpenAI `skillroute` field and headers, the dashboard — is
shaped from it, so renaming a field is one change here, checked by pydantic on the way in and out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RecruitMode = Literal["sample", "topk", "dynamic"]
FinishReason = Literal["stop", "length"]  # why a generation ended, as `experts.types` has it
DecisionMode = Literal["sample", "topk", "dynamic", "budget"]
Role = Literal["expert", "aggregator", "competitor"]  # a competitor answers only to be scored

# the OpenAI model id that routes: an expert of this name could never be asked by name, and
# /v1/models would list the id twice
AUTO = "auto"


def not_reserved(name: str) -> str:
    """An expert's name, refused where it is the model id that routes."""
    if name == AUTO:
        raise ValueError(f"the name {AUTO!r} is the model id that routes (model: auto); give the expert another name")
    return name


class Record(BaseModel):
    """A stored shape: unknown fields are errors, so a typo or a stale row fails loudly."""

    model_config = ConfigDict(extra="forbid")


def milliseconds(seconds: float | None) -> float | None:
    """A latency limit in the milliseconds it was asked in: kept in seconds, 1001 ms read back as
    1000.9999999999999 without the rounding (to a picosecond)."""
    return None if seconds is None else round(seconds * 1e3, 9)


class QueryBudget(Record):
    """What a query may spend; `from_key` names the limits its API key's defaults supplied."""

    model_config = ConfigDict(frozen=True)

    latency_s: float | None = None
    energy_j: float | None = None
    from_key: tuple[str, ...] = ()


class Ask(Record):
    """One query as it was admitted, stored whole so a recovery asks it again the same way.

    `expert` set: that expert answers alone (a direct chat), unrouted and unaggregated."""

    model_config = ConfigDict(frozen=True)

    text: str
    k: int = 3
    mode: RecruitMode | None = None  # None: the router's preferred mode
    seed: int | None = None
    budget: QueryBudget | None = None  # set: the best subset within it (k is its size cap)
    expert: str | None = None
    # OpenAI's sampling asks, for every generation of the query (pipeline/sampling.py)
    max_tokens: int | None = Field(default=None, ge=1, description="Lowers the pool's token limits.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Replaces the experts' own.")
    stop: tuple[str, ...] = Field(default=(), max_length=4, description="Generation ends at any of these.")
    key_id: int | None = Field(default=None, description="The stored API key that asked (client or admin; -1: the "
                               "environment's admin key): only it and admins may read the query back or judge it; "
                               "None: anyone may.")
    # Transport, not the query: the live client's stream (pipeline/stream.py). Never stored,
    # so the stored request is the same streamed or not, and a recovery streams to no one.
    stream_to: str | None = Field(default=None, exclude=True)


class SkillMatch(Record):
    keyword: str
    skill: str
    similarity: float


class ExpertScore(Record):
    """One eligible expert as the router scored it for a query."""

    model_config = ConfigDict(frozen=True)

    name: str
    suitability: float
    competence: float
    weight: float
    recruited: int = Field(default=0, description="How many of the k draws picked this expert.")


class BudgetCandidate(Record):
    expert: str
    quality: float = Field(description="The router's estimate that this expert answers right.")
    latency_s: float = Field(description="Predicted on its device, alone.")
    energy_j: float
    device: str | None = Field(description="The device it runs on (experts on one device run in turn).")


class BudgetRecord(Record):
    """A budgeted query's limits, candidates, chosen subset, and predicted and measured cost."""

    latency_ms: float | None
    energy_j: float | None
    k_max: int
    from_key: list[str] = Field(description="Limits taken from the API key's defaults.")
    chosen: list[str] = Field(description="The exact best subset within the budget.")
    predicted_quality: float
    predicted_latency_s: float
    predicted_energy_j: float
    measured_latency_s: float | None = Field(
        default=None, description="Wall time of the expert and aggregation stages (of the query's batch).")
    measured_energy_j: float | None = None
    measured_energy_basis: str | None = None
    solver_nodes: int
    local_slowdown: float | None = Field(
        default=None, description="How much slower this shared CPU ran than its profile lately. Applied to a "
        "model with fewer than 3 recent replies of its own; one with more is scaled by its own ratio (each "
        "candidate's predicted cost is after it).")
    candidates: list[BudgetCandidate]


class Failure(Record):
    """A generation that failed, and why; the failure is this query's alone."""

    expert: str
    role: Role
    error: str


class DeviceTime(Record):
    """One worker's part in the query's batch: predicted (device profile) and measured seconds,
    each up to the moment the query was done (it is stored then, while the batch's longer queries
    may still run), the measure including the worker's work in progress then."""

    worker: str
    device: str
    predicted_s: float
    measured_s: float | None = None


class Decision(Record):
    """Who answers a query and why: its skills, every eligible expert's score, the draws; once
    answered, which generations failed, who stood in for them, and each device's time."""

    router: str = Field(description="symbolic | knn | direct (a named expert, unrouted).")
    mode: DecisionMode
    seed: int = Field(description="The seed used: send it back to get this decision again.")
    skills: list[SkillMatch] = Field(default_factory=list)
    experts: list[ExpertScore] = Field(default_factory=list)
    recruited: list[str] = Field(default_factory=list, description="Who answers, repeats included (k draws).")
    aggregator: str | None = Field(default=None, description="Who aggregates; none when one answer needs none.")
    budget: BudgetRecord | None = Field(default=None, description="With a budget: the subset and its cost.")
    failures: list[Failure] = Field(default_factory=list, description="Generations that failed, and why.")
    fallbacks: list[str] = Field(default_factory=list,
                                 description="Next-ranked experts recruited in place of failed ones.")
    devices: list[DeviceTime] = Field(default_factory=list,
                                      description="Per worker the query used: the batch's predicted and measured time "
                                                  "up to the query's end.")
    competition: bool = Field(default=False, description="Every eligible expert answered, to teach the router.")
    competitors: list[str] = Field(default_factory=list,
                                   description="Experts that answered only to be scored (a competition's others, "
                                               "or a new expert explored); their answers are not aggregated.")
    competition_scores: dict[str, float] = Field(
        default_factory=dict, description="Each scored expert's mark (1 right, 0 wrong) against gold or consensus.")

    def as_routed(self) -> Decision:
        """The record as routing made it, before answering added failures, stand-ins, times, scores."""
        return self.model_copy(update={"failures": [], "fallbacks": [], "devices": [], "competition_scores": {}})

    @classmethod
    def made(cls, router: str, mode: DecisionMode, seed: int, skills: Sequence[SkillMatch],
             scores: Sequence[ExpertScore], recruited: Sequence[str], aggregator: str | None,
             budget: BudgetRecord | None = None, competitors: Sequence[str] = (), competition: bool = False
             ) -> Decision:
        """The record, with each score's draw count and no aggregator for a lone answer."""
        picks = list(recruited)
        counts = Counter(picks)
        experts = [s if s.recruited == counts[s.name] else s.model_copy(update={"recruited": counts[s.name]})
                   for s in scores]  # copies only what changes: a decision scores every expert in the pool
        return cls(router=router, mode=mode, seed=seed, skills=list(skills), experts=experts, recruited=picks,
                   aggregator=aggregator if len(picks) > 1 else None, budget=budget, competitors=list(competitors),
                   competition=competition)


class Answer(Record):
    """One generation of a query: an expert's answer or the aggregator's synthesis."""

    expert: str
    role: Role
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: FinishReason | None = None  # the backend's; None: it could not tell (or stored before)


class Outcome(Record):
    """A query answered: its decision (with measured cost), every answer, the final text."""

    decision: Decision
    answers: list[Answer] = Field(default_factory=list)
    text: str = ""
    latency_s: float = 0.0
    stages_s: float = 0.0  # wall time of the query's expert and aggregation stages
    error: str | None = None  # set: no generation of this query succeeded (it fails alone)

    @property
    def answer(self) -> str:
        return final_answer(self.text)


def final_answer(text: str) -> str:
    """The answer line of a reply when it has one, else the whole reply trimmed."""
    for line in text.strip().splitlines():
        if line.strip().lower().startswith("answer:"):
            return line.strip()[len("answer:"):].strip() or text.strip()
    return text.strip()


class QueryError(Exception):
    """A query the service cannot take; `index` is its place in the request (a list, a batch)."""

    def __init__(self, message: str, index: int = 0, param: str = "query"):
        super().__init__(message)
        self.message, self.index, self.param = message, index, param


class NoExperts(QueryError):
    """The pool has no profiled expert to recruit yet."""


class Unanswerable(QueryError):
    """No expert of the pool can take this query (a replay pool's recording lacks it, say)."""


class ExpertUnusable(QueryError):
    """The experts that could take the query cannot run: their model cannot be read (a file
    removed since it was registered). The service's fault, not the query's."""


class UnknownExpert(QueryError):
    """A direct call names an expert the pool does not have."""
