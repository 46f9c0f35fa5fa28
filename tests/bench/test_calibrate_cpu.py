"""bench/calibrate_cpu.py's held-out row: a correction fitted on one prompt's runs, scored on the other's;
and its refusal, before measuring, of fewer models than a fit needs."""

from __future__ import annotations

import statistics

import pytest

from experts.calibration import Run, prediction_errors, timing
from experts.devices import load_devices
from tests.bench.conftest import load_script

calibrate = load_script("calibrate_cpu")


def _runs(writing_scale: float) -> list[Run]:
    """A 0.5B model that reads as the profile predicts and writes `writing_scale` times its
    predicted time, over a short and a long prompt, as the bench times them."""
    profile = load_devices()["local-cpu"]
    runs = []
    for prompt in (40, 170):
        for out in (8, 32, 64):
            t = timing(profile, Run(0.5, prompt, out, 0.0))
            runs += [Run(0.5, prompt, out, (t.read_s + writing_scale * t.write_s) * n) for n in (1.0, 1.02)]
    return runs


def test_a_split_learned_on_one_prompt_predicts_the_other() -> None:
    profile = load_devices()["local-cpu"]
    runs = _runs(writing_scale=0.6)
    held_out = calibrate.held_out(profile, "m", runs)
    assert len(held_out) == len(runs)  # every run is scored once, by the fold that did not see it
    assert 0.9 <= statistics.median(held_out) <= 1.0  # close, and on the safe side
    assert statistics.median(prediction_errors(profile, runs)) < 0.85  # uncorrected: far over


def test_fewer_than_two_models_are_refused_before_measuring(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def no_measuring(model: str, repeats: int) -> None:
        raise AssertionError(f"measured {model} though the profile cannot be fitted")

    monkeypatch.setattr(calibrate, "measure", no_measuring)
    for models in (["smollm2-135m-instruct"], ["smollm2-135m-instruct", "smollm2-135m-instruct"]):
        with pytest.raises(SystemExit) as exit_:
            calibrate.main(["--models", *models])
        assert exit_.value.code == 2
        assert "at least 2 different models" in capsys.readouterr().err
