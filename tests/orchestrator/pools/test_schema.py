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
