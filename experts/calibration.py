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
last generations the service ran there, so a budget is checked against what this device
delivers now, and most replies come in under their prediction.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from experts.devices import DeviceProfile, estimate_cost


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


def slowed(profile: DeviceProfile, factor: float) -> DeviceProfile:
    """The profile with every compute time multiplied by `factor` (transfer and power kept)."""
    return profile.model_copy(update={
        "tokens_per_s_at_1b": profile.tokens_per_s_at_1b / factor,
        "prefill_tokens_per_s_at_1b": profile.prefill_tokens_per_s_at_1b / factor,
        "call_overhead_ms": profile.call_overhead_ms * factor,
        "token_overhead_ms": profile.token_overhead_ms * factor,
        "prompt_token_overhead_ms": profile.prompt_token_overhead_ms * factor,
    })


class Slowdown:
    """measured / predicted latency of the recent generations on one device, and its quantile,
    for the device as a whole and for each model on it.

    One law cannot fit every model: on this CPU the packaged Qwen2.5-1.5B decodes nearly as fast
    per token as the 0.5B (bench/calibrate_cpu.py prints each model's error; that both pay most
    for their 151k-token vocabulary each step is a guess, not measured), so the profile
    over-predicts one and under-predicts the other, and one shared quantile, set by the model
    the profile under-predicts most, scaled the other's already high prediction further up. A
    model with `min_runs` of its own is corrected by its own recent runs; until then by the
    device's."""

    def __init__(self, window: int = 32, quantile: float = 0.9, min_runs: int = 3, max_models: int = 256):
        self.window, self.quantile, self.min_runs, self.max_models = window, quantile, min_runs, max_models
        self._ratios: deque[float] = deque(maxlen=window)
        self._by_model: OrderedDict[str, deque[float]] = OrderedDict()  # least recently run first
        self._lock = threading.Lock()

    def observe(self, profile: DeviceProfile, runs: Sequence[Run], model: str | None = None) -> None:
        """Record runs (of `model`, when named) against `profile`, the uncorrected one, so the
        factor does not compound."""
        timed = [r for r in runs if r.prompt_tokens + r.output_tokens > 0 and r.latency_s > 0]
        ratios = prediction_errors(profile, timed)
        with self._lock:
            self._ratios.extend(ratios)
            if model is not None and ratios:
                self._own(model).extend(ratios)

    def factor(self, model: str | None = None) -> float | None:
        """The quantile of the model's recent ratios once it has `min_runs`, else of the
        device's; None until the device has `min_runs`."""
        with self._lock:
            own = self._by_model.get(model) if model is not None else None
            ratios = sorted(own if own is not None and len(own) >= self.min_runs else self._ratios)
        if len(ratios) < self.min_runs:
            return None
        return ratios[min(len(ratios) - 1, int(self.quantile * len(ratios)))]

    def _own(self, model: str) -> deque[float]:
        """The model's ratios, made most recent; the least recently run model is forgotten past
        `max_models` (a bound: models come and go with registrations)."""
        ratios = self._by_model.pop(model, None) or deque(maxlen=self.window)
        self._by_model[model] = ratios
        while len(self._by_model) > self.max_models:
            self._by_model.popitem(last=False)
        return ratios
