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
from collections import deque
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
    if len(runs) < 4 or len(sizes) < 2:
        raise ValueError(f"calibration needs >= 4 runs over >= 2 model sizes, got {len(runs)} over {len(sizes)}")
    a = np.array([[r.params_b * r.prompt_tokens, r.params_b * r.output_tokens, 1.0, r.output_tokens] for r in runs])
    y = np.array([max(r.latency_s - base.transfer_latency_ms / 1e3, 0.0) for r in runs])
    (inv_prefill, inv_decode, call_s, token_s), _ = nnls(a, y)
    update = {"call_overhead_ms": call_s * 1e3, "token_overhead_ms": token_s * 1e3, "calibrated_from": label}
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
    })


class Slowdown:
    """measured / predicted latency of the recent generations on one device, and its quantile."""

    def __init__(self, window: int = 32, quantile: float = 0.9, min_runs: int = 3):
        self.quantile, self.min_runs = quantile, min_runs
        self._ratios: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, profile: DeviceProfile, runs: Sequence[Run]) -> None:
        """Record runs against `profile` (the uncorrected one, so the factor does not compound)."""
        timed = [r for r in runs if r.prompt_tokens + r.output_tokens > 0 and r.latency_s > 0]
        with self._lock:
            self._ratios.extend(prediction_errors(profile, timed))

    def factor(self) -> float | None:
        """The quantile of the recent ratios; None until `min_runs` were seen."""
        with self._lock:
            ratios = sorted(self._ratios)
        if len(ratios) < self.min_runs:
            return None
        return ratios[min(len(ratios) - 1, int(self.quantile * len(ratios)))]
