"""How a question's skills are read: the embedding fast path vs Symbolic-MoE's keyword LLM.

    python bench/keywords.py [--per-subject 2] [--model qwen2.5-coder-0.5b-instruct] [--samples 5] [--json]

MMLU validation questions (per subject, seeded) are read both ways against the same skill
vocabulary (MMLU's 57 subjects and a few general skills): the embedding path compares the
question with the skills; the keyword path asks a packaged model for 2-5 keywords (the paper's
prompt, sampled, agreed keywords kept) and maps each to its nearest skill. Prints, per way, how
often the question's own subject is among its skills (with a 95% interval) and the seconds per
question, and the ratio of the two times.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from experts.factory import make_backend  # noqa: E402
from experts.types import BaseModelSpec, ExpertSpec  # noqa: E402
from orchestrator.pipeline.keywords import KeywordReader  # noqa: E402
from orchestrator.scheduling.fleet import Fleet  # noqa: E402
from orchestrator.scheduling.worker import DeviceWorker  # noqa: E402
from skills.datasets import load_mmlu  # noqa: E402
from skills.embedder import Embedder  # noqa: E402
from skills.vocabulary import SEED_SKILLS, SkillMatch, SkillVocabulary  # noqa: E402


def interval(hits: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a proportion."""
    if n == 0:
        return 0.0, 0.0
    p, z = hits / n, 1.96
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)
    # at 0 or n hits the bound is exactly 0 or 1; the arithmetic lands a rounding off it ("-0.0")
    return (0.0 if hits == 0 else low), (1.0 if hits == n else high)


def scored(name: str, found: list[list[SkillMatch]], subjects: list[str], seconds: float) -> dict[str, object]:
    hits = sum(subject in {m.skill for m in ms} for ms, subject in zip(found, subjects, strict=True))
    low, high = interval(hits, len(subjects))
    return {"way": name, "subject_hit_rate": round(hits / len(subjects), 3),
            "interval": [round(low, 3), round(high, 3)], "seconds_per_question": round(seconds / len(subjects), 4),
            "mean_skills": round(sum(len(ms) for ms in found) / len(found), 2)}


def bench(per_subject: int, model: str, samples: int) -> dict[str, object]:
    questions = load_mmlu("validation", per_subject=per_subject, seed=0)
    texts, subjects = [q.question for q in questions], [q.subject for q in questions]
    vocab = SkillVocabulary(SEED_SKILLS, Embedder(kind="transformer"))  # what skills are read with (settings: auto)
    started = time.perf_counter()
    by_embedding = vocab.nearest_for_texts(texts, 3)
    embedding_s = time.perf_counter() - started
    fleet = Fleet({"cpu": DeviceWorker("cpu", 8 * 2**30, make_backend)})
    expert = ExpertSpec(name="keywords", base=BaseModelSpec(kind="llamacpp", source=f"package:{model}"))
    fleet["cpu"].ensure_loaded(expert.base)  # the load is not the reading
    started = time.perf_counter()
    keywords = KeywordReader(fleet, samples).read(expert, "cpu", texts)
    by_keywords = [vocab.map_keywords(k) for k in keywords]
    llm_s = time.perf_counter() - started
    fleet.shutdown()
    out = [scored("embedding", by_embedding, subjects, embedding_s), scored(f"keyword llm ({model})", by_keywords,
                                                                          subjects, llm_s)]
    return {"questions": len(questions), "samples": samples, "ways": out,
            "time_ratio_llm_over_embedding": round(llm_s / max(embedding_s, 1e-9), 1),
            "example": {"question": texts[0], "subject": subjects[0], "keywords": keywords[0]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-subject", type=int, default=2)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = bench(args.per_subject, args.model, args.samples)
    if args.json:
        print(json.dumps(res))
        return
    for w in res["ways"]:  # type: ignore[attr-defined]
        print(f"{w['way']:>40}: subject among skills {100 * w['subject_hit_rate']:.1f}% "
              f"[{100 * w['interval'][0]:.1f}, {100 * w['interval'][1]:.1f}], {w['seconds_per_question']} s/question, "
              f"{w['mean_skills']} skills")
    print(f"keyword LLM / embedding time: {res['time_ratio_llm_over_embedding']}x; example: {res['example']}")


if __name__ == "__main__":
    main()
