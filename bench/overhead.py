"""Service overhead: the same generations through the service and from llama.cpp called directly.

    python bench/overhead.py [--model package:qwen2.5-coder-0.5b-instruct] [--prompts 16]
                             [--max-tokens 48] [--json]

- direct: `llama_cpp.Llama` on the model file (the n_ctx and threads the service gives it),
  `create_chat_completion` per prompt, greedy;
- service: `skillroute serve --runtime inline` over a pool of that one model, each prompt
  POSTed to /v1/chat/completions naming the expert (its answer is that model's, no
  recruitment), timed at the client: HTTP, admission, the store, the batching window and the
  worker are all inside the figure.

Both run in one process tree on the same machine, alternating prompt by prompt (each first
half the time) so that noise from other work falls on both; each is warmed with one untimed
prompt. Greedy decoding makes the two generate the same tokens (both counts are printed to
show it).

JSON keys: `ratio` (service seconds ÷ direct seconds), `service_s`, `direct_s`, `service_tokens`,
`direct_tokens`, `prompts`, `model`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.served import serve  # noqa: E402
from experts.catalog import resolve_source  # noqa: E402
from experts.llamacpp import default_threads  # noqa: E402

EXPERT, N_CTX = "solo", 2048
PROMPTS = [
    "What is 17*23?", "What is the capital of France?", "Name the planet closest to the Sun.",
    "What is the boiling point of water in Celsius?", "Who wrote Hamlet?", "What is 144 divided by 12?",
    "What gas do plants take in for photosynthesis?", "What is the square root of 81?",
    "Which ocean is the largest?", "What is 9 plus 16?", "What language is spoken in Brazil?",
    "How many sides does a hexagon have?", "What is the chemical symbol for gold?",
    "What is 250 minus 75?", "Which organ pumps blood through the body?", "What is 7 cubed?",
]


def pool_file(folder: Path, model: str) -> Path:
    """One expert on `model`, no persona; a two-question validation set and voted answers, so
    the start profiles in seconds (the profile plays no part here: the expert is named)."""
    pool = {"name": "overhead",
            "validation": {"sources": [{"kind": "arithmetic", "n": 2}], "skills_per_question": 1},
            "generation": {"profiling_max_tokens": 8},
            "aggregator": {"mode": "vote"},
            "experts": [{"name": EXPERT, "base": {"kind": "llamacpp", "source": model, "n_ctx": N_CTX}}]}
    path = folder / "pool.yaml"
    path.write_text(yaml.safe_dump(pool))
    return path


class Direct:
    """llama.cpp with nothing around it."""

    def __init__(self, model: str):
        import llama_cpp

        threads = default_threads()
        self.llm = llama_cpp.Llama(model_path=str(resolve_source(model)), n_ctx=N_CTX, n_threads=threads,
                                   n_threads_batch=threads, use_mmap=False, verbose=False)

    def ask(self, prompt: str, max_tokens: int) -> int:
        out: Any = self.llm.create_chat_completion(messages=[{"role": "user", "content": prompt}],
                                                   max_tokens=max_tokens, temperature=0.0, seed=0)
        return int(out["usage"]["completion_tokens"])


def via_service(http: httpx.Client, prompt: str, max_tokens: int) -> int:
    body = {"model": EXPERT, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0}
    r = http.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"])


def timed(call: Any) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = call()
    return time.perf_counter() - started, tokens


def measure(model: str, n: int, max_tokens: int) -> dict[str, object]:
    prompts = (PROMPTS * (n // len(PROMPTS) + 1))[:n]
    direct = Direct(model)
    totals = {"service": [0.0, 0], "direct": [0.0, 0]}
    with tempfile.TemporaryDirectory() as scratch, serve(str(pool_file(Path(scratch), model))) as served, \
            httpx.Client(base_url=served.url, timeout=600) as http:
        via_service(http, "Say hello.", 8)  # warm both: first calls allocate
        direct.ask("Say hello.", 8)
        for i, prompt in enumerate(prompts):
            calls = [("service", lambda p=prompt: via_service(http, p, max_tokens)),
                     ("direct", lambda p=prompt: direct.ask(p, max_tokens))]
            for name, call in calls[::-1] if i % 2 else calls:  # each goes first half the time
                seconds, tokens = timed(call)
                totals[name][0] += seconds
                totals[name][1] += tokens
    service_s, direct_s = totals["service"][0], totals["direct"][0]
    return {"model": model, "prompts": n, "service_s": round(service_s, 2), "direct_s": round(direct_s, 2),
            "service_tokens": totals["service"][1], "direct_tokens": totals["direct"][1],
            "ratio": round(service_s / direct_s, 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="package:qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = measure(args.model, args.prompts, args.max_tokens)
    print(json.dumps(res) if args.json else "\n".join(f"{k:>15}: {v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
