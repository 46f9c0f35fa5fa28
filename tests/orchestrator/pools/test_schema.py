"""What the pool schema refuses: a pool file that would start and then fail, or be silently
served otherwise than it says. Each refusal is a `PoolConfigError` naming the file and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.pools.loader import PoolConfigError, load_pool_config

MOCK = "base: {kind: mock, source: m1}"
PRO_LIMIT = "validation.sources.0.mmlu_pro.limit"


def refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pool.yaml"
    path.write_text(text)
    with pytest.raises(PoolConfigError) as err:
        load_pool_config(path)
    assert str(path) in str(err.value)
    return str(err.value)


def test_an_expert_named_twice_is_refused_naming_it(tmp_path: Path) -> None:
    """The first start registered one and failed with a Conflict naming no file; the next
    silently served the last entry."""
    text = f"experts:\n  - {{name: alpha, {MOCK}}}\n  - {{name: beta, {MOCK}}}\n  - {{name: alpha, {MOCK}}}\n"
    assert "experts: the name 'alpha' is given to more than one expert" in refusal(tmp_path, text)


def test_an_expert_named_as_the_routing_model_id_is_refused(tmp_path: Path) -> None:
    assert "the name 'auto' is the model id that routes" in refusal(tmp_path, f"experts:\n  - {{name: auto, {MOCK}}}\n")


def test_a_fixed_aggregator_must_be_an_expert_of_the_pool(tmp_path: Path) -> None:
    """A typo (`qwen-0.5B` for `qwen-0.5b`) was stored as the aggregator and silently passed over
    for the most competent expert."""
    text = f"aggregator: {{fixed: qwen-0.5B}}\nexperts:\n  - {{name: qwen-0.5b, {MOCK}}}\n"
    assert "aggregator.fixed: 'qwen-0.5B' is no expert of the pool" in refusal(tmp_path, text)


@pytest.mark.parametrize(("validation", "said"), [
    ("{sources: []}", "validation.sources: List should have at least 1 item"),
    ("{sources: [{kind: mmlu, subjects: []}]}", "validation.sources.0.mmlu.subjects: List should have at least 1"),
    ("{sources: [{kind: mmlu_pro, path: /x, limit: 0}]}", f"{PRO_LIMIT}: Input should be greater than or equal"),
    ("{sources: [{kind: mmlu_pro, path: /x, limit: -5}]}", f"{PRO_LIMIT}: Input should be greater than or equal"),
], ids=["no-sources", "no-subjects", "limit-0", "limit-negative"])
def test_a_validation_set_of_nothing_is_refused(tmp_path: Path, validation: str, said: str) -> None:
    """Each profiled every expert on no question: all "ready" with empty profiles."""
    assert said in refusal(tmp_path, f"validation: {validation}\n")


def test_a_server_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path) -> None:
    """The source is shown to every reader of the experts, the dashboard and /metrics."""
    far = "{kind: openai, source: 'http://u:S3CRET@127.0.0.1:9/v1', model: m}"
    text = f"experts:\n  - {{name: alpha, {MOCK}}}\n  - {{name: far, base: {far}}}\n"
    why = refusal(tmp_path, text)
    assert "experts[1] (far).base.source: the server URL carries credentials" in why and "S3CRET" not in why


@pytest.mark.parametrize(("source", "said"), [
    ("{kind: mmlu, split: valdation, subjects: [virology]}",
     "validation.sources.0.mmlu.split: Value error, unknown MMLU split 'valdation'; choose one of validation, test"),
    ("{kind: mmlu, subjects: [virology, virolgy]}",
     "validation.sources.0.mmlu.subjects: Value error, no MMLU questions for subjects ['virolgy']"),
    ("{kind: mmlu_pro, path: /nonexistent/replay, limit: 4}",
     "validation.sources.0.mmlu_pro: Value error, path: no recording folder or questions file at '/nonexistent/"),
], ids=["split", "subject", "mmlu_pro-path"])
def test_a_validation_source_profiling_cannot_read_is_refused_naming_its_field(
        tmp_path: Path, source: str, said: str) -> None:
    """Each passed the file and failed the start with a traceback (a ValueError or a
    FileNotFoundError out of profiling) naming no field."""
    assert said in refusal(tmp_path, f"validation: {{sources: [{source}]}}\n")


def test_a_relative_recording_path_is_read_from_the_working_directory_and_kept_as_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiling reads the path as given, from where the service runs: the check does the same
    and rewrites nothing (the path is part of the profiling set's key)."""
    (tmp_path / "runs" / "rec").mkdir(parents=True)
    path = tmp_path / "pool.yaml"
    path.write_text("validation: {sources: [{kind: mmlu_pro, path: rec, split: profiling}]}\n")
    monkeypatch.chdir(tmp_path / "runs")
    assert load_pool_config(path).validation.sources[0].path == "rec"  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PoolConfigError, match=f"path: no recording folder at 'rec' \\(relative to {tmp_path}\\)"):
        load_pool_config(path)
