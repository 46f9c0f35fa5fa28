"""Calibrate the `local-cpu` device profile from real llama.cpp generations on this machine.

    python bench/calibrate_cpu.py [--json] [--repeats R] [--models NAME NAME ...]

llama.cpp uses $SKILLROUTE_LLAMA_THREADS threads (default: every core), as the service does.

Runs the packaged GGUF models (SmolLM2-135M and Qwen2.5-Coder-0.5B; the 1.5B too when its
packages are installed) through the service's own `LlamaCppBackend`, each once to page its
weights in, then over short and long prompts with 8, 32 and 64 output tokens, and fits the
profile's throughput and overheads (`experts/calibration.py`). Prints the fitted numbers for
`experts/devices.yaml`, and measured / predicted latency per run for both the packaged and the
fitted profile, over all runs and each model's median. Then the online correction the planner
applies (`experts.calibration.Slowdown`, its 0.9 quantile of measured / predicted) is compared
three ways over the same runs: one factor for the device, each model's own, and each model's
own reading and writing scales (what the planner applies): each model's
median measured / corrected prediction, where 1 is exact and below 1 over-predicts. These are
fitted on the runs they score; `own_split_other_prompt` is held out: the split fitted on the
short prompt's runs scores the long prompt's, and the other way round (its median, and its
worst run as `own_split_other_prompt_worst`). The
1-minute load average is printed beside them: on a CPU shared with other work every number here
moves with it. Last, each model's prefill rate alone: one output token after prompts of about
40, 160 and 420 tokens, the slope of latency over prompt tokens, beside the profile's rate.
Every prompt starts with its own nonce, since llama.cpp reuses a cached prompt prefix.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from experts.calibration import Run, Slowdown, fit_profile, prediction_errors, slowed  # noqa: E402
from experts.catalog import list_packaged  # noqa: E402
from experts.cost_model import parse_model_size  # noqa: E402
from experts.devices import DeviceProfile, load_devices  # noqa: E402
from experts.llamacpp import LlamaCppBackend  # noqa: E402
from experts.types import BaseModelSpec, ExpertSpec  # noqa: E402

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")
SENTENCE = "The Roman Empire had many emperors, wars, laws and reforms."
SHORT = "What is 17*23? Explain step by step."
LONG = " ".join([SENTENCE] * 12) + " Summarise it."
OUTPUT_TOKENS = (8, 32, 64)
PREFILL_SENTENCES = (1, 10, 30)  # about 40, 160 and 420 prompt tokens with the chat template


def installed_models() -> list[str]:
    ready = {m.name for m in list_packaged() if m.installed}
    return [m for m in MODELS if m in ready]


def measure(model: str, repeats: int) -> tuple[list[Run], list[Run]]:
    """Warm the model once, then time every prompt x output length `repeats` times; then its
    prefill alone."""
    spec = ExpertSpec(name="calibration", base=BaseModelSpec(kind="llamacpp", source=f"package:{model}"),
                      system_prompt="You are a helpful assistant.")
    backend = LlamaCppBackend(spec.base)
    backend.load()
    params_b = parse_model_size(model).active_params / 1e9  # what the service's placements use
    backend.generate([spec.request("warm", SHORT, 8)])
    runs = []
    for text in (SHORT, LONG):
        for out in OUTPUT_TOKENS:
            for i in range(repeats):
                # the nonce leads: llama.cpp reuses a cached prompt prefix, and a live query shares
                # only the system prompt with the one before it
                gen = backend.generate([spec.request(f"{out}-{i}", f"({out}, {i}) {text}", out)])[0]
                runs.append(Run(params_b, gen.prompt_tokens, gen.completion_tokens, gen.latency_s))
    prefill = prefill_runs(backend, spec, params_b, repeats)
    backend.unload()
    return runs, prefill


def prefill_runs(backend: LlamaCppBackend, spec: ExpertSpec, params_b: float, repeats: int) -> list[Run]:
    """One output token after prompts of growing length: the slope of latency over prompt
    tokens is the model's prefill rate here."""
    runs = []
    for n in PREFILL_SENTENCES:
        for i in range(repeats):
            text = f"[{n}.{i}] " + " ".join([SENTENCE] * n)
            gen = backend.generate([spec.request(f"p{n}-{i}", text, 1)])[0]
            runs.append(Run(params_b, gen.prompt_tokens, gen.completion_tokens, gen.latency_s))
    return runs


def prefill_rates(profile: DeviceProfile, prefill: dict[str, list[Run]]) -> dict[str, dict[str, float]]:
    """Each model's measured prefill tokens/s (least-squares slope) beside the profile's (its
    per-prompt-token overhead included)."""
    rates = {}
    for m, rs in prefill.items():
        slope = float(np.polyfit([r.prompt_tokens for r in rs], [r.latency_s for r in rs], 1)[0])
        params_b = rs[0].params_b
        rates[m] = {"measured_tokens_per_s": round(1 / slope, 1), "measured_at_1b": round(params_b / slope, 1),
                    "profile_tokens_per_s": round(profile.prefill_tokens_per_s(params_b), 1)}
    return rates


def summary(ratios: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(ratios), "max": max(ratios), "min": min(ratios)}


def by_model(profile: DeviceProfile, sized: dict[str, list[Run]]) -> dict[str, float]:
    """Each model's median measured / predicted latency."""
    return {m: round(statistics.median(prediction_errors(profile, rs)), 3) for m, rs in sized.items()}


def corrected(profile: DeviceProfile, sized: dict[str, list[Run]]) -> dict[str, dict[str, float]]:
    """Each model's median measured / predicted after the planner's correction: the device's
    one factor (as before models had their own), each model's own factor, and each model's own
    reading and writing scales (`Slowdown.factors`, what the planner applies)."""
    tracker = Slowdown(window=sum(len(rs) for rs in sized.values()))
    for m, rs in sized.items():
        tracker.observe(profile, rs, m)
    device = tracker.factor() or 1.0
    raw = {m: statistics.median(prediction_errors(profile, rs)) for m, rs in sized.items()}
    split = {m: split_profile(profile, m, rs) for m, rs in sized.items()}
    held = {m: held_out(profile, m, rs) for m, rs in sized.items()}
    return {"device_factor": {m: round(r / device, 3) for m, r in raw.items()},
            "own_factor": {m: round(r / (tracker.factor(m) or 1.0), 3) for m, r in raw.items()},
            "own_split": {m: round(statistics.median(prediction_errors(split[m], rs)), 3) for m, rs in sized.items()},
            "own_split_other_prompt": {m: round(statistics.median(e), 3) for m, e in held.items()},
            "own_split_other_prompt_worst": {m: round(max(e), 3) for m, e in held.items()}}


def held_out(profile: DeviceProfile, model: str, runs: Sequence[Run]) -> list[float]:
    """Measured / corrected over each prompt's runs, the split fitted on the other prompt's runs
    alone: how a correction learned from one kind of request predicts another (the rows above
    are fitted on the runs they score)."""
    cut = statistics.median(r.prompt_tokens for r in runs)  # SHORT and LONG lie far apart
    short, long = [r for r in runs if r.prompt_tokens <= cut], [r for r in runs if r.prompt_tokens > cut]
    errors = []
    for fit, scored in ((short, long), (long, short)):
        errors += prediction_errors(split_profile(profile, model, fit), scored)
    return errors


def split_profile(profile: DeviceProfile, model: str, runs: Sequence[Run]) -> DeviceProfile:
    """The profile scaled as the planner scales it for `model` after these runs of its own
    (`Slowdown.factors`: reading and writing apart where the runs tell them apart)."""
    tracker = Slowdown(window=len(runs))
    tracker.observe(profile, runs, model)
    return slowed(profile, *(tracker.factors(model) or (1.0, 1.0)))


def run(repeats: int, models: Sequence[str]) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    measured = {m: measure(m, repeats) for m in models}
    sized, prefill = {m: r[0] for m, r in measured.items()}, {m: r[1] for m, r in measured.items()}
    runs = [r for rs in sized.values() for r in rs]
    base = load_devices()["local-cpu"]
    threads = LlamaCppBackend(BaseModelSpec(kind="llamacpp", source="unused")).n_threads
    label = f"bench/calibrate_cpu.py: {len(runs)} llama.cpp runs, {threads} threads, load average {load_before:.1f}"
    fitted = fit_profile(base, runs + [r for rs in prefill.values() for r in rs], label)
    keys = ("tokens_per_s_at_1b", "prefill_tokens_per_s_at_1b", "call_overhead_ms", "token_overhead_ms",
            "prompt_token_overhead_ms")
    return {
        "models": list(models), "threads": threads, "runs": [r.__dict__ for r in runs],
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "fitted": {k: getattr(fitted, k) for k in keys},
        "measured_over_predicted": {"packaged": summary(prediction_errors(base, runs)),
                                    "fitted": summary(prediction_errors(fitted, runs))},
        "by_model": {"packaged": by_model(base, sized), "fitted": by_model(fitted, sized)},
        "corrected_by_model": corrected(base, sized),
        "prefill_by_model": prefill_rates(base, prefill),
    }


def report(r: dict[str, object]) -> None:
    print(f"# local-cpu calibration over {', '.join(r['models'])} ({r['threads']} threads)")  # type: ignore[arg-type]
    print(f"load average 1m: {r['load_average_1m']}")
    for k, v in r["fitted"].items():  # type: ignore[attr-defined]
        print(f"    {k}: {v:.4g}")
    for name, s in r["measured_over_predicted"].items():  # type: ignore[attr-defined]
        print(f"measured / predicted latency, {name} profile: median {s['median']:.2f} "
              f"(min {s['min']:.2f}, max {s['max']:.2f})")
    print("each model's median measured / predicted (packaged profile corrected online: device_factor, "
          "own_factor, own_split, own_split_other_prompt held out):")
    for name, per in [*r["by_model"].items(), *r["corrected_by_model"].items()]:  # type: ignore[attr-defined]
        print(f"    {name:13s} " + "  ".join(f"{m} {v:.2f}" for m, v in per.items()))
    print("prefill tokens/s, measured (slope over prompt length) / packaged profile:")
    for m, rate in r["prefill_by_model"].items():  # type: ignore[attr-defined]
        print(f"    {m}: {rate['measured_tokens_per_s']:.0f} / {rate['profile_tokens_per_s']:.0f} "
              f"(measured x params: {rate['measured_at_1b']:.0f} at 1B)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", nargs="+", choices=MODELS, help="two or more (default: every installed one)")
    args = ap.parse_args(argv)
    models = list(dict.fromkeys(args.models or installed_models()))
    if len(models) < 2:
        # fit_profile separates throughput from per-call overhead across model sizes: with one
        # size it fails, and only after every model has been measured
        ap.error(f"needs at least 2 different models to fit the profile, got {', '.join(models) or 'none'} "
                 f"(--models takes 2 or more of: {', '.join(MODELS)})")
    result = run(args.repeats, models)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
