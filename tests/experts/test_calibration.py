"""Fitting a device profile to measured runs: it recovers a known profile and refuses too little."""

from __future__ import annotations

import random

import pytest

from experts.calibration import (
    SPLIT_BOUND,
    Run,
    Slowdown,
    fit_profile,
    prediction_errors,
    slowed,
    split_factors,
    timing,
)
from experts.devices import DeviceProfile, estimate_cost, load_devices


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


def test_runs_kept_off_the_device_correct_their_model_alone() -> None:
    """A model whose size is a guess: its ratios say how wrong the guess is, not the device."""
    base = load_devices()["local-cpu"]
    tracker = Slowdown(window=10, quantile=0.9, min_runs=3)
    predicted = estimate_cost(base, 150.0, 40, 24).latency_s
    tracker.observe(base, [Run(150.0, 40, 24, predicted / 200)] * 4, "guessed", device_wide=False)
    assert tracker.factor() is None and tracker.factor("other") is None
    assert tracker.factor("guessed") == pytest.approx(1 / 200) and not tracker.empty


def test_reading_and_writing_are_scaled_apart_once_the_runs_tell_them_apart() -> None:
    # the 1.5B here: prompts read as the profile says, replies written ~1.7x faster
    base = load_devices()["local-cpu"]
    truth = slowed(base, 1.0, 0.6)
    runs = [Run(1.5, prompt, out, estimate_cost(truth, 1.5, prompt, out).latency_s)
            for prompt, out in [(200, 4), (400, 8), (30, 96), (60, 64), (120, 32)]]
    tracker = Slowdown(window=10, quantile=0.9, min_runs=3)
    tracker.observe(base, runs[:2], "qwen")
    tracker.observe(base, [runs[0]], "qwen")
    read, write = tracker.factors("qwen") or (0.0, 0.0)
    assert read == tracker.factor("qwen") < 1  # prompt-heavy runs alone: their factor reads,
    assert write == 1.0  # and writing, which they did not show, is not scaled below the profile
    tracker.observe(base, runs[2:], "qwen")
    read, write = tracker.factors("qwen") or (0.0, 0.0)
    assert read == pytest.approx(1.0, rel=0.02) and write == pytest.approx(0.6, rel=0.02)
    for prompt, out in [(300, 2), (20, 128)]:  # a reply of either kind is now costed as it runs
        corrected = estimate_cost(slowed(base, read, write), 1.5, prompt, out).latency_s
        assert corrected == pytest.approx(estimate_cost(truth, 1.5, prompt, out).latency_s, rel=0.02)
    assert tracker.factors("unseen") == (tracker.factor(), tracker.factor())


def test_a_split_never_strays_far_from_the_single_factor() -> None:
    base = load_devices()["local-cpu"]
    truth = slowed(base, 8.0, 0.5)  # reading 16x dearer than writing, relative to the profile
    timings = [timing(base, Run(0.5, p, o, estimate_cost(truth, 0.5, p, o).latency_s))
               for p, o in [(300, 2), (10, 100), (10, 90)]]
    read, write = split_factors(timings, 0.9) or (0.0, 0.0)
    single = max(t.ratio for t in timings)  # the 0.9 quantile of three
    assert read == pytest.approx(8.0, rel=0.02)  # within bounds: as fitted
    assert write == pytest.approx(single / SPLIT_BOUND) and write > 0.5  # fitted 0.5: held at the bound


def test_runs_alike_in_mix_scale_only_the_part_they_are_made_of() -> None:
    base = load_devices()["local-cpu"]
    fast_writer = slowed(base, 1.0, 0.5)
    tracker = Slowdown(window=10, quantile=0.9, min_runs=3)
    tracker.observe(base, [Run(0.5, 10, out, estimate_cost(fast_writer, 0.5, 10, out).latency_s)
                           for out in (90, 100, 110)], "chatty")
    read, write = tracker.factors("chatty") or (0.0, 0.0)
    assert write == tracker.factor("chatty") < 0.6 and read == 1.0  # long replies, short prompts


def _cached(truth_profile: DeviceProfile, prompt: int, out: int, saved_tokens: int = 30) -> Run:
    """A 0.5B run on `truth_profile` whose first `saved_tokens` prompt tokens were cached (llama.cpp
    reuses the prefix the last call shared: the template and system prompt)."""
    full = estimate_cost(truth_profile, 0.5, prompt, out).latency_s
    saved = estimate_cost(truth_profile, 0.5, saved_tokens, 0).latency_s
    return Run(0.5, prompt, out, full - saved)


def test_a_fixed_saving_per_call_is_not_taken_for_fast_reading() -> None:
    base = load_devices()["local-cpu"]
    truth = slowed(base, 1.0, 0.7)
    runs = [_cached(truth, p, o) for p, o in [(40, 8), (40, 64), (400, 2), (200, 32), (60, 96), (300, 8)]]
    read, write = split_factors([timing(base, r) for r in runs], 0.9) or (0.0, 0.0)
    assert read == pytest.approx(1.0, rel=0.05) and write == pytest.approx(0.7, rel=0.05)
    long = estimate_cost(slowed(base, read, write), 0.5, 800, 4).latency_s
    assert long >= _cached(truth, 800, 4).latency_s  # a longer prompt than any seen: not under-predicted


def test_reading_seen_on_short_prompts_alone_is_not_scaled_below_the_profile() -> None:
    base = load_devices()["local-cpu"]
    truth = slowed(base, 1.0, 0.7)
    runs = [_cached(truth, 40, o) for o in (4, 8, 16, 32, 64, 96)]  # a short chat prompt, replies of every length
    read, write = split_factors([timing(base, r) for r in runs], 0.9) or (0.0, 0.0)
    assert read == 1.0 and write < 0.8  # the saving would pass for reading at ~half the rate
    long = estimate_cost(slowed(base, read, write), 0.5, 400, 4).latency_s
    assert long >= _cached(truth, 400, 4).latency_s
