"""Fitting a device profile to measured runs: it recovers a known profile and refuses too little."""

from __future__ import annotations

import random

import pytest

from experts.calibration import Run, Slowdown, fit_profile, prediction_errors, slowed
from experts.devices import estimate_cost, load_devices


def test_fit_recovers_the_profile_that_made_the_runs() -> None:
    base = load_devices()["local-cpu"]
    truth = base.model_copy(update={"tokens_per_s_at_1b": 9.0, "prefill_tokens_per_s_at_1b": 120.0,
                                    "call_overhead_ms": 40.0, "token_overhead_ms": 6.0,
                                    "prompt_token_overhead_ms": 3.0})
    rng = random.Random(1)
    runs = []
    for _ in range(30):
        params, prompt, out = rng.choice([0.135, 0.5, 1.5]), rng.randint(20, 300), rng.randint(1, 96)
        noise = rng.uniform(0.97, 1.03)
        runs.append(Run(params, prompt, out, estimate_cost(truth, params, prompt, out).latency_s * noise))
    fitted = fit_profile(base, runs, "synthetic")
    assert fitted.tokens_per_s_at_1b == pytest.approx(9.0, rel=0.1)
    assert fitted.prefill_tokens_per_s_at_1b == pytest.approx(120.0, rel=0.2)
    assert fitted.token_overhead_ms == pytest.approx(6.0, rel=0.2)
    assert fitted.prompt_token_overhead_ms == pytest.approx(3.0, rel=0.2)
    assert fitted.power_w == base.power_w and fitted.calibrated_from == "synthetic"
    ratios = prediction_errors(fitted, runs)
    assert max(abs(r - 1) for r in ratios) < 0.1
    assert max(abs(r - 1) for r in prediction_errors(base, runs)) > 0.3  # the old profile was off


def test_fit_needs_two_model_sizes() -> None:
    base = load_devices()["local-cpu"]
    with pytest.raises(ValueError, match="2 model sizes"):
        fit_profile(base, [Run(0.5, 10, i, 0.1 * i) for i in range(1, 9)], "x")


def test_a_coefficient_the_runs_cannot_see_keeps_the_old_value() -> None:
    base = load_devices()["local-cpu"]
    runs = [Run(p, 0, out, p * out / 10.0) for p in (0.1, 0.5) for out in (4, 16, 64)]  # no prompt tokens
    fitted = fit_profile(base, runs, "decode only")
    assert fitted.prefill_tokens_per_s_at_1b == base.prefill_tokens_per_s_at_1b
    assert fitted.tokens_per_s_at_1b == pytest.approx(10.0, rel=1e-3)


def test_slowdown_is_a_high_quantile_of_measured_over_predicted() -> None:
    base = load_devices()["local-cpu"]
    tracker = Slowdown(window=10, quantile=0.9, min_runs=3)
    predicted = estimate_cost(base, 0.5, 40, 24).latency_s
    tracker.observe(base, [Run(0.5, 40, 24, predicted * 2.0)] * 2)
    assert tracker.factor() is None  # too few runs to say
    tracker.observe(base, [Run(0.5, 40, 24, predicted * f) for f in (1.0, 3.0, 1.5, 2.5)])
    assert tracker.factor() == pytest.approx(3.0)
    slow = slowed(base, 3.0)
    assert estimate_cost(slow, 0.5, 40, 24).latency_s == pytest.approx(3.0 * predicted)
    assert slow.power_w == base.power_w


def test_each_model_is_corrected_by_its_own_runs_once_it_has_enough() -> None:
    base = load_devices()["local-cpu"]
    tracker = Slowdown(window=10, quantile=0.9, min_runs=3, max_models=2)
    predicted = estimate_cost(base, 0.5, 40, 24).latency_s
    tracker.observe(base, [Run(0.5, 40, 24, predicted * 2.0)] * 3, "slow")
    tracker.observe(base, [Run(0.5, 40, 24, predicted * 0.5)] * 2, "fast")
    assert tracker.factor("fast") == pytest.approx(2.0)  # two runs of its own: the device's until a third
    tracker.observe(base, [Run(0.5, 40, 24, predicted * 0.5)], "fast")
    assert tracker.factor("fast") == pytest.approx(0.5) and tracker.factor("slow") == pytest.approx(2.0)
    assert tracker.factor("unseen") == tracker.factor() == pytest.approx(2.0)
    tracker.observe(base, [Run(0.5, 40, 24, predicted)] * 3, "third")  # past max_models: "slow" is forgotten
    assert tracker.factor("slow") == tracker.factor() and tracker.factor("fast") == pytest.approx(0.5)
