"""Streamed queries in a batch: only the final generation (the aggregation, or a lone answer)
streams, to the sink its client opened; the outcome is the one an unstreamed run gives. The
query's own max_tokens, temperature and stop reach every generation it makes."""

from __future__ import annotations

import threading

import pytest

from experts.mock import MockBackend
from experts.streaming import word_pieces
from experts.types import BaseModelSpec, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, Decision, Outcome
from orchestrator.pipeline.sampling import SEED_SPACE, sample_seed
from orchestrator.pipeline.stream import StreamHub, TooManyStreams, final_step, sink_for

Q = "What is 12*12?"


def run(c: SkillRoute, asks: list[Ask]) -> list[Outcome]:
    snapshot = c.pool.snapshot
    return c.pipeline.answer(snapshot, asks, c.pipeline.route(snapshot, asks))


def backends(c: SkillRoute) -> list[MockBackend]:
    out = [c.fleet["cpu"].backend(BaseModelSpec(kind="mock", source=s)) for s in ("m1", "m2")]
    assert all(isinstance(b, MockBackend) for b in out)
    return out  # type: ignore[return-value]


def sent_by(c: SkillRoute, asks: list[Ask]) -> tuple[Outcome, list[GenerationRequest]]:
    """The outcome of one query, and every request its generations sent."""
    for b in backends(c):
        b.requests.clear()
    (out,) = run(c, asks)
    return out, [r for b in backends(c) for r in b.requests]


class Sink:
    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.lock = threading.Lock()

        self.writers: set[str] = set()

    def __call__(self, writer: str, piece: str) -> None:
        with self.lock:
            self.pieces.append(piece)
            self.writers.add(writer)


def test_the_hub_is_bounded_and_forgets_closed_streams() -> None:
    hub = StreamHub(max_open=2)
    hub.open("a", print)
    hub.open("b", print)
    with pytest.raises(TooManyStreams):
        hub.open("c", print)
    hub.close("a")
    hub.open("c", print)
    assert len(hub) == 2 and hub.sink("a") is None and hub.sink("c") is print


def test_only_the_final_generation_of_a_streamed_query_streams() -> None:
    routed = Decision.made("symbolic", "topk", 0, [], [], ["alpha", "beta"], "gamma")
    lone = Decision.made("symbolic", "topk", 0, [], [], ["alpha"], "gamma")
    assert final_step(routed, -1) and not final_step(routed, 0) and not final_step(routed, -2)
    assert final_step(lone, 0) and not final_step(lone, -2)  # a competitor never writes the reply
    hub = StreamHub()
    hub.open("s", print)
    pieces: list[tuple[str, str]] = []
    hub.open("t", lambda writer, piece: pieces.append((writer, piece)))
    sink = sink_for(hub, Ask(text=Q, stream_to="t"), lone, 0, "e1")
    assert sink is not None
    sink("hi")
    assert pieces == [("e1", "hi")]  # the writer travels with its pieces
    assert sink_for(hub, Ask(text=Q), lone, 0, "e1") is None
    assert sink_for(None, Ask(text=Q, stream_to="s"), lone, 0, "e1") is None
    assert sink_for(hub, Ask(text=Q, stream_to="gone"), lone, 0, "e1") is None  # its client left


def test_a_streamed_batch_answers_as_an_unstreamed_one_and_streams_the_final_text(container: SkillRoute) -> None:
    # topk: three different experts, so there is something to aggregate
    asks = [Ask(text=Q, k=3, mode="topk", seed=4), Ask(text=Q, k=1, seed=4), Ask(text="What is 3+5?", k=3, seed=1)]
    plain = run(container, asks)
    sinks = {"agg": Sink(), "lone": Sink()}
    for stream_id, sink in sinks.items():
        container.pipeline.streams.open(stream_id, sink)
    streamed = run(container, [asks[0].model_copy(update={"stream_to": "agg"}),
                               asks[1].model_copy(update={"stream_to": "lone"}), asks[2]])
    for ours, theirs in zip(streamed, plain, strict=True):
        assert ours.text == theirs.text and ours.decision.as_routed() == theirs.decision.as_routed()
        assert [a.model_dump(exclude={"latency_s"}) for a in ours.answers] == \
            [a.model_dump(exclude={"latency_s"}) for a in theirs.answers]
    assert streamed[0].answers[-1].role == "aggregator" and streamed[1].answers[-1].role == "expert"
    assert sinks["agg"].pieces == word_pieces(streamed[0].text)  # the aggregator's words, one by one
    assert sinks["lone"].pieces == word_pieces(streamed[1].text)  # the lone expert's
    assert sinks["agg"].writers == {streamed[0].answers[-1].expert}  # each piece names its writer
    assert sinks["lone"].writers == {streamed[1].answers[-1].expert}
    assert len(container.pipeline.streams) == 2  # open until their clients close them


def test_max_tokens_temperature_and_stop_reach_every_generation_of_the_query(container: SkillRoute) -> None:
    plain, _ = sent_by(container, [Ask(text=Q, k=3, seed=4)])
    asked, sent = sent_by(container, [Ask(text=Q, k=3, seed=4, max_tokens=2, temperature=0.7, stop=(")",))])
    roles = {r.request_id.split(":")[1] for r in sent}
    assert len(sent) == 4 and roles == {"0", "1", "2", "agg"}  # three draws (sampled: none coalesced), the aggregator
    assert all((r.sampling.max_tokens, r.sampling.temperature, r.sampling.stop) == (2, 0.7, [")"]) for r in sent)
    assert all(a.completion_tokens <= 2 for a in asked.answers) and asked.text != plain.text
    limits = container.pipeline.limits
    _, sent = sent_by(container, [Ask(text=Q, k=1, seed=4, max_tokens=10_000)])
    assert [r.sampling.max_tokens for r in sent] == [limits.expert_max_tokens]  # it lowers the limit, never raises it
    _, sent = sent_by(container, [Ask(text=Q, k=3, seed=4)])
    assert all(r.sampling.temperature == 0.0 and r.sampling.stop == [] for r in sent)  # the experts' own


def test_the_querys_seed_seeds_each_generations_sample(container: SkillRoute) -> None:
    """Every generation was seeded by the expert's own seed alone: asked at a temperature above 0,
    every query drew the same sample whatever its seed."""
    def sampled(seed: int | None) -> tuple[str, list[int]]:
        out, sent = sent_by(container, [Ask(text=Q, k=3, mode="topk", seed=seed, temperature=0.7)])
        return out.text, sorted(r.sampling.seed or 0 for r in sent)

    four, again, five = sampled(4), sampled(4), sampled(5)
    assert four == again and four[0] != five[0] and not set(four[1]) & set(five[1])
    assert sampled(None)[1] != sampled(None)[1]  # unset: a seed is drawn, so two asks sample differently
    assert 0 <= sample_seed(2**70, 2**31 - 1, 8) < SEED_SPACE  # any expert seed: one every backend takes
