"""Fit a device profile to measured generations, so budget predictions match this machine.

The cost model (`experts/devices.py`) says one generation's compute time is

    params·prompt / P + params·out / D + call + out·tok

with P, D the prefill and decode tokens/s at 1B params, `call` a fixed cost per generation and
`tok` a fixed cost per output token. That is linear in (1/P, 1/D, call, tok), so measured runs
of models of at least two sizes pin all four down by non-negative least squares. A coefficient
the runs cannot see (0 from the fit: every prompt short, say) keeps the profile's old value,
which errs on the slow side rather than predicting a free prefill.

On a CPU other work shares, speed moves with the load (here, with other jobs running, the same
generation took 2 s one minute and 20 s the next). `Slowdown` keeps predictions honest online:
it scales every time of the profile by a high quantile of measured / predicted latency over the
last generations the service ran there (each model's own, reading and writing apart where its
runs tell them apart), so a budget is checked against what this device delivers now, and most
replies come in under their prediction.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from experts.devices import DeviceProfile, estimate_cost

MIN_SHARE_SPREAD = 0.3  # runs whose writing shares span less cannot tell reading from writing
SPLIT_BOUND = 4.0  # how far either split scale may stray from the single factor
READ_SPAN = 2.0  # prompts whose predicted reading spans this ratio show its rate apart from a fixed saving


@dataclass(frozen=True)
class Run:
    """One measured generation: model size, tokens in and out, wall time."""

    params_b: float
    prompt_tokens: int
    output_tokens: int
    latency_s: float


def fit_profile(base: DeviceProfile, runs: Sequence[Run], label: str) -> DeviceProfile:
    """`base` with its throughput and overheads refitted to `runs` (transfer and power kept)."""
    sizes = {r.params_b for r in runs}
    if len(runs) < 5 or len(sizes) < 2:
        raise ValueError(f"calibration needs >= 5 runs over >= 2 model sizes, got {len(runs)} over {len(sizes)}")
    a = np.array([[r.params_b * r.prompt_tokens, r.params_b * r.output_tokens, 1.0, r.output_tokens, r.prompt_tokens]
                  for r in runs])
    y = np.array([max(r.latency_s - base.transfer_latency_ms / 1e3, 0.0) for r in runs])
    (inv_prefill, inv_decode, call_s, token_s, prompt_s), _ = nnls(a, y)
    update: dict[str, object] = {"call_overhead_ms": call_s * 1e3, "token_overhead_ms": token_s * 1e3,
                                 "prompt_token_overhead_ms": prompt_s * 1e3, "calibrated_from": label}
    if inv_prefill > 0:
        update["prefill_tokens_per_s_at_1b"] = 1.0 / inv_prefill
    if inv_decode > 0:
        update["tokens_per_s_at_1b"] = 1.0 / inv_decode
    return base.model_copy(update=update)


def prediction_errors(profile: DeviceProfile, runs: Sequence[Run]) -> list[float]:
    """Measured / predicted latency per run (above 1: slower than predicted)."""
    return [r.latency_s / estimate_cost(profile, r.params_b, r.prompt_tokens, r.output_tokens).latency_s
            for r in runs]


def slowed(profile: DeviceProfile, factor: float, writing: float | None = None) -> DeviceProfile:
    """The profile with every compute time multiplied by `factor` (transfer and power kept); with
    `writing`, the time to write the reply (decode) by that instead."""
    write = factor if writing is None else writing
    return profile.model_copy(update={
        "tokens_per_s_at_1b": profile.tokens_per_s_at_1b / write,
        "prefill_tokens_per_s_at_1b": profile.prefill_tokens_per_s_at_1b / factor,
        "call_overhead_ms": profile.call_overhead_ms * factor,
        "token_overhead_ms": profile.token_overhead_ms * write,
        "prompt_token_overhead_ms": profile.prompt_token_overhead_ms * factor,
    })


@dataclass(frozen=True)
class Timing:
    """One run against the uncorrected profile: the predicted time to read the prompt (with the
    call's overhead and transfer), to write the reply, and what the run took."""

    read_s: float
    write_s: float
    latency_s: float

    @property
    def ratio(self) -> float:
        return self.latency_s / (self.read_s + self.write_s)

    @property
    def writing_share(self) -> float:
        return self.write_s / (self.read_s + self.write_s)


def timing(profile: DeviceProfile, run: Run) -> Timing:
    read = estimate_cost(profile, run.params_b, run.prompt_tokens, 0).latency_s
    whole = estimate_cost(profile, run.params_b, run.prompt_tokens, run.output_tokens).latency_s
    return Timing(read, whole - read, run.latency_s)


def split_factors(timings: Sequence[Timing], quantile: float) -> tuple[float, float] | None:
    """(reading, writing) scales fitted apart by non-negative least squares, then both raised by
    the quantile of measured / fitted; None when the runs cannot tell the two apart (too alike in
    how much of each is writing) or the fit puts nothing on one. Neither scale strays past
    `SPLIT_BOUND` times the single factor: a few runs must not make a part nearly free.

    llama.cpp reuses the prompt prefix its last call shared (the template and system prompt), so
    every call reads a fixed number of tokens fewer than predicted, and a short prompt looks
    read at half the rate. Where the prompts' predicted reading spans `READ_SPAN` the fit takes a
    free intercept to hold that saving, which is then left out of the prediction (the safe side):
    on this machine it was 0.03-0.53 s a call and the reading scale beside it 0.9-1.2. Where they
    do not span, the rate is not seen apart from the saving, so reading is not scaled below the
    profile: learned on short prompts alone, it under-predicted a long one by up to 2x."""
    shares = [t.writing_share for t in timings]
    if max(shares) - min(shares) < MIN_SHARE_SPREAD:
        return None
    read, write = np.array([t.read_s for t in timings]), np.array([t.write_s for t in timings])
    y = np.array([t.latency_s for t in timings])
    spans = read.min() > 0 and read.max() >= READ_SPAN * read.min() and len(y) > 3
    r, w, saving = _fit(read, write, y, per_call=spans)
    if r <= 0 or w <= 0:
        return None
    safety = _quantile(y / (r * read + w * write + saving), quantile)
    r, w = r * safety, w * safety
    single = _quantile([t.ratio for t in timings], quantile)
    low, high = single / SPLIT_BOUND, single * SPLIT_BOUND
    return float(np.clip(r if spans else max(r, 1.0), low, high)), float(np.clip(w, low, high))


def _fit(read: np.ndarray, write: np.ndarray, y: np.ndarray, per_call: bool) -> tuple[float, float, float]:
    """(reading, writing, saving) scales by non-negative least squares; with `per_call`, beside a
    free intercept whose negative part is the saving (0 or less). A positive intercept, a cost
    per call, is left out: the quantile that raises both scales covers it."""
    fixed = [np.ones_like(y), -np.ones_like(y)] if per_call else []
    (r, w, *c), _ = nnls(np.column_stack([read, write, *fixed]), y)
    return float(r), float(w), min(c[0] - c[1], 0.0) if c else 0.0


def _quantile(values: Sequence[float] | np.ndarray, quantile: float) -> float:
    ordered = sorted(float(v) for v in values)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


class Slowdown:
    """measured / predicted latency of the recent generations on one device, and its quantile,
    for the device as a whole and for each model on it.

    One law cannot fit every model: on this CPU the packaged Qwen2.5-1.5B decodes a token only
    ~1.5x slower than the 0.5B with 3x its parameters (bench/calibrate_cpu.py prints each model's
    error; that both pay much for their 151k-token vocabulary each step is a guess, not
    measured), so the profile over-predicts one and under-predicts the other, and one shared
    quantile, set by the model the profile under-predicts most, scaled the other's already high
    prediction further up. A
    model with `min_runs` of its own is corrected by its own recent runs; until then by the
    device's. Nor does one factor fit one model: with the measured prefill the 1.5B reads a
    prompt as predicted and writes ~1.7x faster, so a factor set by prompt-heavy runs (MMLU
    profiling) over-predicts its long replies. Once its runs mix short and long replies enough,
    reading and writing are scaled apart (`factors`, `split_factors`), the prompt prefix
    llama.cpp reuses from call to call held apart from the reading rate."""

    def __init__(self, window: int = 32, quantile: float = 0.9, min_runs: int = 3, max_models: int = 256):
        self.window, self.quantile, self.min_runs, self.max_models = window, quantile, min_runs, max_models
        self._ratios: deque[float] = deque(maxlen=window)
        self._by_model: OrderedDict[str, deque[Timing]] = OrderedDict()  # least recently run first
        self._lock = threading.Lock()

    def observe(self, profile: DeviceProfile, runs: Sequence[Run], model: str | None = None,
                device_wide: bool = True) -> None:
        """Record runs (of `model`, when named) against `profile`, the uncorrected one, so the
        factor does not compound. Not `device_wide`: the model's own only (a model whose size is
        a guess, 150B for an unknown name, runs ~200x "faster" than predicted: that ratio says
        nothing of the device, and made every other model look that fast)."""
        timings = [timing(profile, r) for r in runs if r.prompt_tokens + r.output_tokens > 0 and r.latency_s > 0]
        with self._lock:
            if device_wide:
                self._ratios.extend(t.ratio for t in timings)
            if model is not None and timings:
                self._own(model).extend(timings)

    @property
    def empty(self) -> bool:
        """Nothing observed yet, for the device or any model."""
        with self._lock:
            return not self._ratios and not self._by_model

    def factor(self, model: str | None = None) -> float | None:
        """The quantile of the model's recent ratios once it has `min_runs`, else of the
        device's; None until the device has `min_runs`."""
        with self._lock:
            own = self._by_model.get(model) if model is not None else None
            ratios = [t.ratio for t in own] if own is not None and len(own) >= self.min_runs else list(self._ratios)
        return _quantile(ratios, self.quantile) if len(ratios) >= self.min_runs else None

    def factors(self, model: str) -> tuple[float, float] | None:
        """(reading, writing) scales for the model: fitted apart once its runs tell them apart
        (`split_factors`), else `factor` for both; None while `factor` is. Runs alike in mix
        speak for the part they are mostly made of: the other is not scaled below the profile
        (a model profiled on long prompts and short answers has not shown how fast it writes)."""
        with self._lock:
            own = list(self._by_model.get(model, ()))
        if len(own) < self.min_runs:
            single = self.factor(model)
            return None if single is None else (single, single)
        split = split_factors(own, self.quantile)
        if split is not None:
            return split
        single = _quantile([t.ratio for t in own], self.quantile)
        writing = float(np.mean([t.writing_share for t in own])) >= 0.5
        return (max(single, 1.0), single) if writing else (single, max(single, 1.0))

    def _own(self, model: str) -> deque[Timing]:
        """The model's timings, made most recent; the least recently run model is forgotten past
        `max_models` (a bound: models come and go with registrations)."""
        timings = self._by_model.pop(model, None) or deque(maxlen=self.window)
        self._by_model[model] = timings
        while len(self._by_model) > self.max_models:
            self._by_model.popitem(last=False)
        return timings
