"""bench/keywords.py and bench/routing_latency.py compare embedding kinds in one run: a row per
kind, and each later kind over the first, the default invocation's keys kept."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import ModuleType

import pytest


def test_kinds_are_parsed_in_order_once_and_unknown_ones_refused(load_bench: Callable[[str], ModuleType]) -> None:
    parse = load_bench("replay_profiles").embedding_kinds
    assert parse("static, both,static") == ["static", "both"]
    for bad in ("", "static,auto", "minilm"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


@pytest.mark.slow  # real MiniLM and static weights, a fresh vocabulary per pass (~20 s on two cores)
def test_keywords_reads_skills_with_each_kind_and_compares_them(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("keywords")
    texts = ["What is the derivative of x squared?", "Which enzyme digests starch in the mouth?"]
    subjects = ["college mathematics", "college biology"]
    rows, seconds = bench.by_embedding(["static", "transformer"], texts, subjects, repeats=2)
    assert [r["kind"] for r in rows] == ["static", "transformer"] and all(len(s) == 2 for s in seconds.values())
    for r in rows:
        assert r["way"] == f"embedding ({r['kind']})" and r["seconds_per_question"] > 0
        assert r["seconds_per_question_sd"] >= 0 and 0 <= r["subject_hit_rate"] <= 1
    over = bench.over_first(rows, seconds)["transformer"]
    assert over["over"] == "static" and over["time_ratio"] > 0 and over["time_ratio_sd"] >= 0
    assert over["hit_rate_difference"] == pytest.approx(rows[1]["subject_hit_rate"] - rows[0]["subject_hit_rate"])


def test_routing_latency_keeps_one_kind_as_it_was_and_compares_several(
    load_bench: Callable[[str], ModuleType],
) -> None:
    bench = load_bench("routing_latency")
    static = {"pool": "p", "queries": 10, "embedding": "static", "p50_ms": 1.0, "p99_ms": 2.0, "embed_p50_ms": 0.5,
              "batched_qps": 2000.0, "load_average_1m": [0.5, 0.6]}
    both = {**static, "embedding": "both", "p50_ms": 25.0, "p99_ms": 40.0, "embed_p50_ms": 20.0, "batched_qps": 50.0}
    assert bench.compared([static]) == static
    res = bench.compared([static, both])
    assert {k: res[k] for k in static} == static  # the first kind's keys, as a one-kind run has them
    assert res["by_embedding"] == {"static": static, "both": both}
    assert res["embedding_over_first"] == {"both": {"over": "static", "p50_ms": 25.0, "p99_ms": 20.0,
                                                    "embed_p50_ms": 40.0, "batched_qps": 0.025}}
    lines = bench.shown(res).splitlines()
    assert len(lines) == 4 and lines[-1].startswith("both / static: p50_ms 25.0x")
