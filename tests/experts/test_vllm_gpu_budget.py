"""What a vLLM engine asks of a GPU, and what the backend tells the device worker it takes: two
models that the device worker puts on one card must both start. No GPU is needed: the worker's
kwargs take the card's total memory as an argument, and has_gpu is patched."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest

from experts import vllm_backend, vllm_worker
from experts.types import BaseModelSpec
from experts.vllm_backend import VLLMBackend
from experts.vllm_worker import GPU_KV_CACHE_BYTES, GPU_OVERHEAD_BYTES, _engine_kwargs
from tests.conftest import MakeHFFolder

CARD = 80 * 2**30
GIB = 2**30


def vllm_starts(free: int, total: int, utilization: float) -> bool:
    """vLLM 0.32's startup check (v1/worker/utils.py request_memory): it refuses to start unless
    free memory covers total x gpu_memory_utilization, whatever kv_cache_memory_bytes says."""
    return free >= math.ceil(total * utilization)


@pytest.fixture(autouse=True)
def on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_backend, "has_gpu", lambda: True)


def model(tmp_path: Path, make_hf_folder: MakeHFFolder, name: str, weights: int, **kw: object) -> VLLMBackend:
    """A backend over a folder whose (sparse) weights file is `weights` bytes as stored."""
    folder = make_hf_folder(tmp_path / name, {"dtype": "bfloat16"})
    with (folder / "model.safetensors").open("r+b") as f:
        f.truncate(weights)
    return VLLMBackend(BaseModelSpec(kind="vllm", source=str(folder)), dtype="bfloat16", **kw)  # type: ignore[arg-type]


def gpu_kwargs(backend: VLLMBackend, card: int = CARD) -> dict[str, object]:
    return _engine_kwargs(asdict(backend.engine_config()), on_cpu=False, sleep_available=True, device_bytes=card)


def test_two_models_the_device_worker_fits_on_one_card_both_start(tmp_path: Path, make_hf_folder: MakeHFFolder) -> None:
    first, second = (model(tmp_path, make_hf_folder, n, 3 * GIB) for n in ("a", "b"))
    assert first.memory_bytes() + second.memory_bytes() < CARD  # the device worker would put both on it
    one, two = gpu_kwargs(first), gpu_kwargs(second)
    assert vllm_starts(CARD, CARD, float(one["gpu_memory_utilization"]))  # type: ignore[arg-type]
    free = CARD - first.memory_bytes()  # what the first engine left
    assert vllm_starts(free, CARD, float(two["gpu_memory_utilization"]))  # type: ignore[arg-type]


def test_the_engine_asks_for_what_the_backend_counts(tmp_path: Path, make_hf_folder: MakeHFFolder) -> None:
    """Weights + the fixed KV budget + the overhead, on both sides: the KV budget replaces vLLM's
    profiling, the utilisation only passes its startup check."""
    backend = model(tmp_path, make_hf_folder, "a", 3 * GIB)
    kwargs = gpu_kwargs(backend)
    assert backend.memory_bytes() == 3 * GIB + GPU_KV_CACHE_BYTES + GPU_OVERHEAD_BYTES
    assert kwargs["kv_cache_memory_bytes"] == GPU_KV_CACHE_BYTES
    assert kwargs["gpu_memory_utilization"] == pytest.approx(backend.memory_bytes() / CARD)


def test_a_given_kv_budget_is_the_one_counted(tmp_path: Path, make_hf_folder: MakeHFFolder) -> None:
    backend = model(tmp_path, make_hf_folder, "a", 3 * GIB, kv_cache_bytes=GIB)
    assert backend.memory_bytes() == 4 * GIB + GPU_OVERHEAD_BYTES
    kwargs = gpu_kwargs(backend)
    assert kwargs["kv_cache_memory_bytes"] == GIB
    assert kwargs["gpu_memory_utilization"] == pytest.approx(backend.memory_bytes() / CARD)


def test_a_model_too_big_for_the_card_asks_no_more_than_vllms_default(
    tmp_path: Path, make_hf_folder: MakeHFFolder
) -> None:
    backend = model(tmp_path, make_hf_folder, "a", 3 * GIB)  # 7 GiB in all
    assert gpu_kwargs(backend, card=6 * GIB)["gpu_memory_utilization"] == vllm_worker.VLLM_DEFAULT_GPU_UTILIZATION


def test_a_given_utilisation_is_passed_on_as_it_is(tmp_path: Path, make_hf_folder: MakeHFFolder) -> None:
    backend = model(tmp_path, make_hf_folder, "a", 3 * GIB, gpu_memory_utilization=0.3)
    kwargs = gpu_kwargs(backend)
    assert kwargs["gpu_memory_utilization"] == 0.3 and "kv_cache_memory_bytes" not in kwargs
    assert backend.memory_bytes() == 3 * GIB  # the card's share is unknown here: weights, as before


def test_the_cpu_keeps_its_fixed_kv_budget_and_no_utilisation(tmp_path: Path, make_hf_folder: MakeHFFolder) -> None:
    config = asdict(model(tmp_path, make_hf_folder, "a", 3 * GIB).engine_config())
    kwargs = _engine_kwargs(config, on_cpu=True, sleep_available=False, device_bytes=0)
    assert kwargs["kv_cache_memory_bytes"] == vllm_worker.CPU_KV_CACHE_BYTES
    assert "gpu_memory_utilization" not in kwargs
