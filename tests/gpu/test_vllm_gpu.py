"""vLLM sleep/wake against a full reload on a CUDA GPU: the fast swap the scheduler relies on.

Skipped without a GPU. Needs a python with a CUDA build of vLLM, named by SKILLROUTE_VLLM_PYTHON
(the CPU venv from scripts/setup_vllm.sh cannot use a GPU). The model is SKILLROUTE_GPU_VLLM_MODEL
(an HF folder) or SmolLM2-135M exported from its package. Timings print, and go as JSON to
$SKILLROUTE_GPU_RESULTS when that is set (the device tool returns files written under $OUT).

    SKILLROUTE_VLLM_PYTHON=/path/to/cuda-vllm/bin/python pytest -s -m gpu tests/gpu
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from experts.backend import BackendError
from experts.hf_export import export_packaged
from experts.types import BaseModelSpec, ChatMessage, GenerationRequest, SamplingParams
from experts.vllm_backend import VLLMBackend, WorkerEngine
from experts.vllm_host import vllm_python

ROUNDS = 3


def _gpu_memory_used_mib() -> int | None:
    """Used memory of GPU 0 as nvidia-smi sees it (all processes: the engine is a subprocess)."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True, text=True, check=False,
    )
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else None


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(_gpu_memory_used_mib() is None, reason="needs a CUDA GPU (nvidia-smi)"),
]


@pytest.fixture(scope="module")
def model_folder() -> Path:
    configured = os.environ.get("SKILLROUTE_GPU_VLLM_MODEL")
    return Path(configured) if configured else export_packaged("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def spec(model_folder: Path) -> BaseModelSpec:
    try:
        vllm_python()
    except BackendError as exc:
        pytest.skip(str(exc))
    return BaseModelSpec(kind="vllm", source=str(model_folder), n_ctx=2048)


BATCH = [
    GenerationRequest(
        request_id=f"q{i}",
        messages=[ChatMessage(role="user", content=text)],
        sampling=SamplingParams(temperature=0.0, max_tokens=32),
    )
    for i, text in enumerate(["What is the capital of France?", "What is 12 times 7?", "Name a primary colour."])
]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _report(results: dict[str, object]) -> None:
    print("\n" + json.dumps(results, indent=2))
    target = os.environ.get("SKILLROUTE_GPU_RESULTS")
    if target:
        Path(target).write_text(json.dumps(results, indent=2))


def test_wake_up_is_much_faster_than_a_reload(spec: BaseModelSpec) -> None:
    # A third of the card: several models must be able to sit on one GPU side by side.
    backend = VLLMBackend(spec, sleep_mode=True, gpu_memory_utilization=0.3)
    start_s = timed(backend.load)
    engine = backend._engine
    assert isinstance(engine, WorkerEngine) and engine.report["platform"] == "cuda"
    assert engine.sleep_mode is True
    reference = [g.text for g in backend.generate(BATCH)]
    awake_mib = _gpu_memory_used_mib()
    sleeps, wakes, asleep_mib = [], [], []
    for _ in range(ROUNDS):
        sleeps.append(timed(backend.unload))
        asleep_mib.append(_gpu_memory_used_mib())
        wakes.append(timed(backend.load))
        assert [g.text for g in backend.generate(BATCH)] == reference  # same weights after waking
    backend.close()
    reload_s = timed(backend.load)  # a new engine from the folder: the cost sleep avoids
    assert [g.text for g in backend.generate(BATCH)] == reference
    backend.close()
    wake_s = min(wakes)
    _report({
        "model": spec.source, "engine_start_s": start_s, "reload_s": reload_s, "wake_s": wakes,
        "sleep_s": sleeps, "reload_over_wake": reload_s / wake_s, "gpu_mib_awake": awake_mib,
        "gpu_mib_asleep": asleep_mib, "worker_report": engine.report,
    })
    assert (backend.loads, backend.wakes, backend.sleeps) == (2, ROUNDS, ROUNDS)
    assert wake_s * 5 < reload_s
    if awake_mib is not None and asleep_mib[0] is not None:
        assert asleep_mib[0] < awake_mib  # sleeping really gave GPU memory back
