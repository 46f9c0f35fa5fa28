"""An MMLU-Pro source's `limit` is a seeded sample spread over the categories, not the first
categories in alphabetical order."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.pools.schema import MMLUProSource
from orchestrator.services.profiling import load_source

REPLAY = Path(__file__).resolve().parents[3].parent / "shared/data/mmlu_pro_replay"


def _corpus(folder: Path, sizes: dict[str, int]) -> str:
    folder.mkdir()
    with gzip.open(folder / "questions.jsonl.gz", "wt", encoding="utf-8") as fh:
        for n, (category, size) in enumerate(sorted(sizes.items())):
            for i in range(size):
                row = {"question_id": f"{n}{i:03d}", "question": f"{category} {i}?", "options": ["a", "b"],
                       "answer": "A", "category": category}
                fh.write(json.dumps(row) + "\n")
    return str(folder)


def test_a_limit_spreads_over_the_categories_by_the_seed(tmp_path: Path) -> None:
    path = _corpus(tmp_path / "corpus", {"biology": 40, "law": 40, "physics": 20})
    drawn = load_source(MMLUProSource(path=path, limit=10), seed=0)
    assert Counter(q.subject for q in drawn) == {"biology": 4, "law": 4, "physics": 2}
    assert drawn == load_source(MMLUProSource(path=path, limit=10), seed=0)
    assert drawn != load_source(MMLUProSource(path=path, limit=10), seed=1)


@pytest.mark.skipif(not REPLAY.is_dir(), reason="replay corpus not present")
def test_the_replay_bench_s_limited_profiling_set_covers_every_category() -> None:
    """bench/replay_profiles.replay_service_pool profiles on 120 of the profiling split (all
    biology before)."""
    full = load_source(MMLUProSource(path=str(REPLAY), split="profiling"), seed=0)
    drawn = load_source(MMLUProSource(path=str(REPLAY), split="profiling", limit=120), seed=0)
    assert len(drawn) == 120 and {q.subject for q in drawn} == {q.subject for q in full}
