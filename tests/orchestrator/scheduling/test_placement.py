"""Planned placement: personas share their base's worker, pins hold, memory fits, work spreads."""

from __future__ import annotations

import pytest

from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec
from orchestrator.scheduling.placement import PlacementError, Slot, plan_placement

GB = 2**30
SIZES = {"big": 6 * GB, "mid": 3 * GB, "small": 1 * GB, "tiny": GB // 4}


def expert(name: str, base: str, worker: str | None = None, device: str | None = None) -> ExpertSpec:
    return ExpertSpec(name=name, base=BaseModelSpec(kind="mock", source=base),
                      placement=ExpertPlacement(worker=worker, device=device))


def size(base: BaseModelSpec) -> int:
    return SIZES[base.source]


def pool(*specs: ExpertSpec) -> dict[str, ExpertSpec]:
    return {s.name: s for s in specs}


def test_personas_over_one_base_share_its_worker() -> None:
    slots = [Slot("a", "local-cpu", 8 * GB), Slot("b", "local-cpu", 8 * GB)]
    placed = plan_placement(pool(expert("stem", "mid"), expert("law", "mid"), expert("chat", "small")), slots, size)
    assert placed["stem"] == placed["law"] != placed["chat"]  # the other base spreads to the idle worker


def test_a_pin_holds_and_its_base_mates_follow() -> None:
    slots = [Slot("a", "local-cpu", 8 * GB), Slot("b", "local-cpu", 8 * GB)]
    placed = plan_placement(pool(expert("x", "mid", worker="b"), expert("y", "mid")), slots, size)
    assert placed == {"x": "b", "y": "b"}
    with pytest.raises(PlacementError, match="unknown worker 'c'.*a, b"):
        plan_placement(pool(expert("z", "mid", worker="c")), slots, size)


def test_personas_pinned_apart_each_run_where_named_and_their_base_counts_on_each() -> None:
    """An expert whose placement names a worker runs there, even beside a persona over the same
    base pinned elsewhere (the first name won: one was moved); the base then loads on each, and
    an unpinned persona follows the first pin."""
    sizes = {"m": 3 * GB, "n": 2 * GB, "k": GB}
    slots = [Slot(w, "local-cpu", 4 * GB) for w in ("a", "b", "c")]
    specs = pool(expert("chem", "m", worker="b"), expert("law", "m", worker="a"), expert("free", "m"),
                 expert("busy1", "k", worker="c"), expert("busy2", "k", worker="c"), expert("other", "n"))
    placed = plan_placement(specs, slots, lambda base: sizes[base.source])
    assert (placed["chem"], placed["law"], placed["free"]) == ("b", "a", "a")
    assert placed["other"] == "c"  # b has the least work, but m is resident there too: n fits only on c


def test_what_must_stay_resident_fits_each_device() -> None:
    slots = [Slot("small-box", "local-cpu", 4 * GB), Slot("big-box", "local-cpu", 8 * GB)]
    placed = plan_placement(pool(expert("b", "big"), expert("m", "mid"), expert("s", "small")), slots, size)
    used = {w: sum(SIZES[e.base.source] for e in [expert("b", "big"), expert("m", "mid"), expert("s", "small")]
                   if placed[e.name] == w) for w in ("small-box", "big-box")}
    assert placed["b"] == "big-box" and all(used[s.name] <= s.memory_bytes for s in slots)


def test_a_base_that_fits_nowhere_goes_to_the_largest_worker() -> None:
    slots = [Slot("a", "local-cpu", 2 * GB), Slot("b", "local-cpu", 4 * GB)]
    assert plan_placement(pool(expert("b", "big")), slots, size) == {"b": "b"}


def test_a_device_asked_for_picks_its_workers() -> None:
    slots = [Slot("cpu", "local-cpu", 8 * GB), Slot("edge-1", "jetson-agx-orin", 8 * GB),
             Slot("edge-2", "jetson-agx-orin", 8 * GB)]
    specs = pool(*(expert(f"e{i}", f"b{i}", device="jetson-agx-orin") for i in range(4)))
    placed = plan_placement(specs, slots, lambda b: GB)
    assert set(placed.values()) == {"edge-1", "edge-2"}  # never the CPU, and both edge boxes used
    assert sorted(placed.values()).count("edge-1") == 2


def test_work_spreads_over_equal_workers() -> None:
    slots = [Slot(f"w{i}", "h100-server", 64 * GB) for i in range(3)]
    specs = pool(*(expert(f"e{i}", f"b{i}") for i in range(9)))
    placed = plan_placement(specs, slots, lambda b: GB)
    assert sorted(list(placed.values()).count(w) for w in ("w0", "w1", "w2")) == [3, 3, 3]


def test_each_kind_goes_to_a_worker_it_computes_on_where_there_is_one() -> None:
    """On a GPU machine the GPU worker has the memory and the fewest experts, yet llama.cpp here
    computes on CPU cores alone: it was placed on the GPU worker, which reserves none."""
    slots = [Slot("cpu", "local-cpu", 8 * GB), Slot("gpu0", "local-gpu", 24 * GB, gpus=1.0)]

    def of(kind: str, name: str) -> ExpertSpec:
        return ExpertSpec(name=name, base=BaseModelSpec(kind=kind, source=f"/models/{name}"))  # type: ignore[arg-type]

    experts = pool(of("llamacpp", "gguf"), of("vllm", "hf"), expert("busy", "mid", worker="cpu"))
    assert plan_placement(experts, slots, lambda base: GB) == {"gguf": "cpu", "hf": "gpu0", "busy": "cpu"}
    cpu_only = [Slot("a", "local-cpu", 8 * GB), Slot("b", "local-cpu", 8 * GB)]
    assert plan_placement(pool(of("vllm", "hf")), cpu_only, lambda base: GB)["hf"] in {"a", "b"}  # none better


def test_a_placed_base_stays_where_it_runs_while_it_still_fits() -> None:
    """Planned afresh, registering a larger base moved an untouched one (alpha, cpu → edge), its
    copy on cpu never released: one base resident on two workers."""
    slots = [Slot("cpu", "local-cpu", 8 * GB), Slot("edge", "local-cpu", 11 * GB)]
    before = plan_placement(pool(expert("alpha", "small")), slots, size)
    assert before == {"alpha": "cpu"}
    after = plan_placement(pool(expert("alpha", "small"), expert("beta", "mid")), slots, size, before)
    assert after == {"alpha": "cpu", "beta": "edge"}  # the new one goes where today's rule puts it


def test_a_placed_base_moves_only_where_it_may_no_longer_stay() -> None:
    """A pin that takes its room, or a device asked for that its worker is not, moves it."""
    slots = [Slot("a", "local-cpu", 4 * GB), Slot("b", "local-cpu", 4 * GB),
             Slot("edge", "jetson-agx-orin", 4 * GB)]
    now = {"x": "a", "y": "b"}
    specs = pool(expert("x", "mid"), expert("p", "big", worker="a"), expert("y", "small", device="jetson-agx-orin"))
    assert plan_placement(specs, slots, lambda base: 3 * GB, now) == {"x": "b", "p": "a", "y": "edge"}


def test_a_plan_planned_again_from_itself_stays() -> None:
    """M fit nowhere and went past a's memory beside K; kept, the next plan (a plain read, nothing
    changed) kept M on a ahead of K, which then moved: a move, and a second copy of K, for nothing."""
    sizes = {"k": 3 * GB, "m": 7 * GB}
    slots = [Slot("a", "local-cpu", 8 * GB), Slot("b", "local-cpu", 4 * GB)]
    first = plan_placement(pool(expert("K", "k")), slots, lambda b: sizes[b.source])
    both = pool(expert("K", "k"), expert("M", "m"))
    kept = plan_placement(both, slots, lambda b: sizes[b.source], first)
    assert plan_placement(both, slots, lambda b: sizes[b.source], kept) == kept
