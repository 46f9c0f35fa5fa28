"""A model's size where its name gives none: counted in its GGUF file's header."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from experts.cost_model import gguf_size, name_size, parse_model_size
from tests.experts.conftest import gguf_bytes


def test_a_gguf_is_sized_by_its_tensors(write_gguf: Callable[..., Path]) -> None:
    size = gguf_size(str(write_gguf()))  # tiny_model: an 8x4 embedding and an 8-wide norm
    assert size is not None and (size.total_params, size.active_params, size.source) == (40, 40, "known")


def test_a_mixture_of_experts_is_active_in_the_experts_it_routes_to(write_gguf: Callable[..., Path]) -> None:
    meta = {"general.architecture": "llama", "llama.expert_count": 8, "llama.expert_used_count": 2}
    tensors = [("blk.0.attn_q.weight", (4, 4), bytes(64)), ("blk.0.ffn_up_exps.weight", (4, 2, 8), bytes(256))]
    size = gguf_size(str(write_gguf("moe.gguf", gguf_bytes(meta, tensors))))
    assert size is not None and (size.total_params, size.active_params) == (80, pytest.approx(16 + 64 * 2 / 8))


def test_no_readable_gguf_gives_no_size(write_gguf: Callable[..., Path], tmp_path: Path) -> None:
    assert gguf_size(str(tmp_path / "missing.gguf")) is None
    assert gguf_size(str(write_gguf("page.html", b"<html>404</html>"))) is None
    assert gguf_size("http://x/v1") is None and gguf_size(str(tmp_path)) is None


def test_a_name_without_a_size_gives_none_and_parsing_falls_back_to_the_frontier_guess() -> None:
    assert name_size("my-model") is None
    assert parse_model_size("my-model").source == "estimate"
    assert name_size("Llama-2-13b").total_params == 13e9  # type: ignore[union-attr]
