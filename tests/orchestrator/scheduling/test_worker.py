"""DeviceWorker's shutdown: every model unloaded, and what a backend keeps beside its weights
(a vLLM backend's warm worker process) ended too, so a shut-down worker leaves nothing running."""

from __future__ import annotations

from pathlib import Path

from experts.mock import MockBackend
from experts.types import BaseModelSpec
from experts.vllm_backend import EngineConfig, VLLMBackend, VLLMEngine
from orchestrator.scheduling.worker import DeviceWorker
from tests.conftest import MakeHFFolder
from tests.experts.test_vllm_backend import MockVLLMEngine


def test_shutdown_unloads_every_model_and_closes_backends_that_keep_a_process(
    tmp_path: Path, make_hf_folder: MakeHFFolder
) -> None:
    engines: list[MockVLLMEngine] = []

    def engine(config: EngineConfig) -> VLLMEngine:
        engines.append(MockVLLMEngine(config, sleep_mode=True))
        return engines[-1]

    folder = make_hf_folder(tmp_path / "model", {})
    vllm_spec, mock_spec = BaseModelSpec(kind="vllm", source=str(folder)), BaseModelSpec(kind="mock", source="m")

    def factory(spec: BaseModelSpec) -> VLLMBackend | MockBackend:
        return VLLMBackend(spec, engine_factory=engine) if spec.kind == "vllm" else MockBackend(spec.key)

    worker = DeviceWorker(factory=factory)
    vllm, mock = worker.ensure_loaded(vllm_spec), worker.ensure_loaded(mock_spec)
    worker.shutdown()
    assert worker.resident() == set() and not mock.is_loaded
    assert engines[0].closed and engines[0].calls[-1] == ("close", None)  # ended, not left asleep
    assert isinstance(vllm, VLLMBackend) and not vllm.is_asleep
    worker.ensure_loaded(vllm_spec)
    assert len(engines) == 2 and vllm.loads == 2  # a new engine after shutdown, not a wake-up
