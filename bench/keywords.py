"""How a question's skills are read: the embedding fast path vs Symbolic-MoE's keyword LLM.

    python bench/keywords.py [--per-subject 2] [--model qwen2.5-coder-0.5b-instruct] [--samples 5]
                             [--embedding transformer] [--repeats 3] [--no-llm] [--json]

MMLU validation questions (per subject, seeded) are read both ways against the same skill
vocabulary (MMLU's 57 subjects and a few general skills): the embedding path compares the
question with the skills; the keyword path asks a packaged model for 2-5 keywords (the paper's
prompt, sampled, agreed keywords kept) and maps each to its nearest skill. Prints, per way, how
often the question's own subject is among its skills (with a 95% interval) and the seconds per
question, and the ratio of the two times.

`--embedding` names the embedding kinds to read skills with, comma-separated (static,
transformer, both; default transformer, what the symbolic router's `auto` uses): one row each,
and each kind after the first against the first, in the same run (`embedding_over_first`: its
time over the first's, mean and standard deviation over the repeats, and its hit rate minus the
first's). Each kind embeds the questions `--repeats` times, the kinds taking turns, each time
with a fresh embedder (its cache would answer a repeat); the model's load and the skills' own
embeddings are not timed. `--no-llm` leaves the keyword LLM out (its row takes minutes).

JSON keys: `questions`, `samples`, `ways` (one per way: `way`, `subject_hit_rate`, `interval`,
`seconds_per_question` (the mean), `mean_skills`; an embedding row adds `kind` and
`seconds_per_question_sd`), `time_ratio_llm_over_embedding` (over the first kind), `example`
(without --no-llm), `load_average_1m` (before and after the embedding rows); `embedding_kinds`,
`embedding_over_first` (with two kinds or more).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.replay_profiles import embedding_kinds  # noqa: E402
from experts.factory import make_backend  # noqa: E402
from experts.types import BaseModelSpec, ExpertSpec  # noqa: E402
from orchestrator.pipeline.keywords import KeywordReader  # noqa: E402
from orchestrator.scheduling.fleet import Fleet  # noqa: E402
from orchestrator.scheduling.worker import DeviceWorker  # noqa: E402
from skills.datasets import load_mmlu  # noqa: E402
from skills.embedder import Embedder, EmbeddingKind  # noqa: E402
from skills.vocabulary import SEED_SKILLS, SkillMatch, SkillVocabulary  # noqa: E402

Row = dict[str, object]


def interval(hits: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a proportion."""
    if n == 0:
        return 0.0, 0.0
    p, z = hits / n, 1.96
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)
    # at 0 or n hits the bound is exactly 0 or 1; the arithmetic lands a rounding off it ("-0.0")
    return (0.0 if hits == 0 else low), (1.0 if hits == n else high)


def scored(name: str, found: list[list[SkillMatch]], subjects: list[str], seconds: float) -> Row:
    hits = sum(subject in {m.skill for m in ms} for ms, subject in zip(found, subjects, strict=True))
    low, high = interval(hits, len(subjects))
    return {"way": name, "subject_hit_rate": round(hits / len(subjects), 3),
            "interval": [round(low, 3), round(high, 3)], "seconds_per_question": round(seconds / len(subjects), 6),
            "mean_skills": round(sum(len(ms) for ms in found) / len(found), 2)}


def read_by_embedding(kind: EmbeddingKind, texts: Sequence[str]) -> tuple[list[list[SkillMatch]], float]:
    """Each text's 3 nearest skills read with `kind`, and the seconds that took. A fresh embedder:
    a shared one's cache would answer a repeat from memory."""
    vocab = SkillVocabulary(SEED_SKILLS, Embedder(kind=kind))  # loads the model and embeds the skills, untimed
    started = time.perf_counter()
    found = vocab.nearest_for_texts(texts, 3)
    return found, time.perf_counter() - started


def by_embedding(kinds: Sequence[EmbeddingKind], texts: list[str], subjects: list[str], repeats: int
                 ) -> tuple[list[Row], dict[str, list[float]]]:
    """One row per kind, and each kind's seconds per pass. The kinds take turns within a repeat,
    so a change in the machine's load falls on all of them alike."""
    found: dict[str, list[list[SkillMatch]]] = {}
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(repeats):
        for kind in kinds:
            found[kind], took = read_by_embedding(kind, texts)
            seconds[kind].append(took)
    rows = []
    for kind in kinds:
        row = scored(f"embedding ({kind})", found[kind], subjects, statistics.mean(seconds[kind]))
        spread = statistics.stdev(seconds[kind]) if repeats > 1 else 0.0
        rows.append({**row, "kind": kind, "seconds_per_question_sd": round(spread / len(texts), 6)})
    return rows, seconds


def over_first(rows: Sequence[Row], seconds: dict[str, list[float]]) -> dict[str, Row]:
    """Each kind after the first against the first: time ratio per repeat (mean, sd), hit rate difference."""
    first, out = rows[0], {}
    for row in rows[1:]:
        ratios = [t / max(f, 1e-9) for t, f in zip(seconds[str(row["kind"])], seconds[str(first["kind"])],
                                                    strict=True)]
        out[str(row["kind"])] = {
            "over": first["kind"], "time_ratio": round(statistics.mean(ratios), 2),
            "time_ratio_sd": round(statistics.stdev(ratios), 2) if len(ratios) > 1 else 0.0,
            "hit_rate_difference": round(float(row["subject_hit_rate"]) - float(first["subject_hit_rate"]), 3)}  # type: ignore[arg-type]
    return out


def by_keywords(model: str, samples: int, texts: list[str], subjects: list[str]) -> tuple[Row, list[str]]:
    """The keyword LLM's row (skills mapped with the transformer, as `llm` mode maps them) and the
    first question's keywords."""
    vocab = SkillVocabulary(SEED_SKILLS, Embedder(kind="transformer"))
    fleet = Fleet({"cpu": DeviceWorker("cpu", 8 * 2**30, make_backend)})
    expert = ExpertSpec(name="keywords", base=BaseModelSpec(kind="llamacpp", source=f"package:{model}"))
    fleet["cpu"].ensure_loaded(expert.base)  # the load is not the reading
    started = time.perf_counter()
    keywords = KeywordReader(fleet, samples).read(expert, "cpu", texts)
    found = [vocab.map_keywords(k) for k in keywords]
    llm_s = time.perf_counter() - started
    fleet.shutdown()
    return scored(f"keyword llm ({model})", found, subjects, llm_s), keywords[0]


def bench(per_subject: int, model: str | None, samples: int, kinds: Sequence[EmbeddingKind] = ("transformer",),
          repeats: int = 3) -> dict[str, object]:
    """`model` None: the embedding rows alone."""
    questions = load_mmlu("validation", per_subject=per_subject, seed=0)
    texts, subjects = [q.question for q in questions], [q.subject for q in questions]
    load = os.getloadavg()[0]  # on shared cores the transformer slows several-fold under others' load
    rows, seconds = by_embedding(kinds, texts, subjects, repeats)
    res: dict[str, object] = {"questions": len(questions), "samples": samples, "ways": rows,
                              "load_average_1m": [round(load, 2), round(os.getloadavg()[0], 2)]}
    if len(kinds) > 1:
        res.update(embedding_kinds=list(kinds), embedding_over_first=over_first(rows, seconds))
    if model is not None:
        llm, keywords = by_keywords(model, samples, texts, subjects)
        res["ways"] = [*rows, llm]
        ratio = float(llm["seconds_per_question"]) / max(float(rows[0]["seconds_per_question"]), 1e-9)  # type: ignore[arg-type]
        res["time_ratio_llm_over_embedding"] = round(ratio, 1)
        res["example"] = {"question": texts[0], "subject": subjects[0], "keywords": keywords}
    return res


def show(res: dict[str, object]) -> None:
    for w in res["ways"]:  # type: ignore[attr-defined]
        sd = f" (sd {w['seconds_per_question_sd']})" if "seconds_per_question_sd" in w else ""
        print(f"{w['way']:>40}: subject among skills {100 * w['subject_hit_rate']:.1f}% "
              f"[{100 * w['interval'][0]:.1f}, {100 * w['interval'][1]:.1f}], {w['seconds_per_question']} s/question"
              f"{sd}, {w['mean_skills']} skills")
    for kind, c in cast(dict[str, Row], res.get("embedding_over_first", {})).items():
        print(f"{kind} / {c['over']}: time {c['time_ratio']}x (sd {c['time_ratio_sd']}), "
              f"subject hit rate {100 * float(c['hit_rate_difference']):+.1f} points")  # type: ignore[arg-type]
    print(f"load average (1 min) before and after the embedding rows: {res['load_average_1m']}")
    if "time_ratio_llm_over_embedding" in res:
        print(f"keyword LLM / embedding time: {res['time_ratio_llm_over_embedding']}x; example: {res['example']}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-subject", type=int, default=2)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--embedding", type=embedding_kinds, default=["transformer"], help="kinds, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="embedding passes per kind (mean and sd)")
    ap.add_argument("--no-llm", action="store_true", help="embedding rows only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    res = bench(args.per_subject, None if args.no_llm else args.model, args.samples, args.embedding, args.repeats)
    if args.json:
        print(json.dumps(res))
    else:
        show(res)


if __name__ == "__main__":
    main()
