"""Runs an HF-format model folder with vLLM: one engine per base model, one engine call per batch.

The engine lives in a worker process under vLLM's own venv (experts/vllm_host.py says why); the
process is started on the first load and kept, so later loads start only the engine.

Swaps: with sleep mode (the GPU default), unload() puts the engine to sleep (weights to host
memory, KV cache dropped) and the next load() wakes it, which is much faster than starting an
engine. `loads` counts real engine starts only; `wakes` counts fast swaps. vLLM's CPU worker
has no sleep, so on a CPU unload() stops the engine and frees its memory, and the next load()
starts one in the same, already warm, process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from experts.backend import BackendError, ModelSourceError
from experts.options import BackendOptions
from experts.types import PACKAGE_PREFIX, BaseModelSpec, Generation, GenerationRequest, SamplingParams, finish_reason_of
from experts.vllm_host import Conversation, EngineConfig, EngineOutput, WorkerEngine, WorkerProcess, vllm_python
from experts.vllm_sleepers import SLEEPERS, Sleepers
from experts.vllm_worker import gpu_engine_bytes

WEIGHT_GLOBS = ("*.safetensors", "*.bin")
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}
# A worker that has hosted many engines keeps some of each (measured here: idle RSS +50 MB per
# Qwen-0.5B engine, several GB after dozens of Qwen-1.5B engines), so once an idle worker holds
# this much more than after its first engine, the next load starts a fresh one.
RECYCLE_GROWTH_BYTES = 2**30
# vLLM's finish reasons for a request it ended without an answer: "error" is a request-level
# internal error, "abort" an abort (v1/engine/__init__.py FinishReason); the text is partial.
FAILED_FINISH_REASONS = ("abort", "error")


class VLLMEngine(Protocol):
    """The slice of `vllm.LLM` we use. Sampling travels as `vllm.SamplingParams` keyword dicts
    because the real LLM lives in another process; `sleep_mode` says whether the engine was
    started with `enable_sleep_mode`, so whether sleep() frees anything."""

    sleep_mode: bool

    def chat(self, conversations: Sequence[Conversation], sampling: Sequence[dict[str, Any]]) -> list[EngineOutput]:
        """One engine call for the whole batch; outputs in input order."""
        ...

    def sleep(self, level: int = 1) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


EngineFactory = Callable[[EngineConfig], VLLMEngine]


def choose_dtype(has_gpu: bool, cpu_flags: str) -> str | None:
    """float32 on a machine with no GPU whose CPU lacks bf16 instructions, else the folder's own.
    Measured on an AVX2 CPU: bf16 decodes Qwen-0.5B 5x slower than float32 (emulated), and its
    greedy outputs change with the batch, while float32's do not."""
    if has_gpu or "avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags:
        return None
    return "float32"


@cache
def has_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


@cache
def default_dtype() -> str | None:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None  # not Linux: leave it to vLLM
    return choose_dtype(has_gpu(), flags)


def check_hf_folder(folder: Path) -> list[Path]:
    """The weight files of an HF-format folder, or ModelSourceError naming what is missing."""
    hint = "a vllm source is an HF folder (config.json + *.safetensors): python -m experts.hf_export <name>"
    if not folder.is_dir():
        raise ModelSourceError(f"no such model folder: {folder} ({hint})")
    try:
        json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ModelSourceError(f"{folder} has no config.json ({hint})") from None
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{folder}/config.json is not valid JSON: {exc}") from None
    weights = sorted(w for glob in WEIGHT_GLOBS for w in folder.glob(glob))
    if not weights:
        raise ModelSourceError(f"{folder} has no weights (*.safetensors or *.bin) ({hint})")
    _check_chat_template(folder)
    for w in weights:
        if w.suffix == ".safetensors":
            _check_safetensors(w)
    return weights


def _check_chat_template(folder: Path) -> None:
    """Every batch goes through the tokenizer's chat template (vllm_worker._too_long, LLM.chat):
    without one, each would fail after the engine started. transformers reads it from
    chat_template.jinja or tokenizer_config.json's "chat_template"."""
    if (folder / "chat_template.jinja").is_file():
        return
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if not (isinstance(config, dict) and config.get("chat_template")):
        raise ModelSourceError(f"{folder} has no chat template: neither chat_template.jinja nor a "
                               "\"chat_template\" in tokenizer_config.json (vLLM's chat() needs one)")


def _check_safetensors(path: Path) -> None:
    """Header sanity: 8-byte length, then JSON. Catches git-lfs pointers and truncated copies."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if len(head) < 9 or head[8:9] != b"{" or 8 + n > size:
        raise ModelSourceError(f"{path} is not a complete safetensors file ({size} bytes)")


def resolve_folder(source: str, options: BackendOptions | None = None) -> Path:
    """A vllm spec's source: an HF folder, or `package:<catalog name>` (exported once from the
    packaged GGUF into the options' hf/ folder, see experts/hf_export.py)."""
    if source.startswith(PACKAGE_PREFIX):
        from experts.hf_export import export_packaged

        opts = options or BackendOptions()
        return export_packaged(source[len(PACKAGE_PREFIX):].strip(), cache=opts.hf_dir, models=opts.models_dir)
    return Path(source).expanduser()


def to_vllm_sampling(s: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams`; temperature 0 is greedy there too."""
    return {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
        "seed": s.seed,
        "stop": list(s.stop) or None,
    }


class VLLMBackend:
    """ExpertBackend over vLLM. `spec.source` is an HF folder or `package:<name>`."""

    def __init__(
        self,
        spec: BaseModelSpec,
        engine_factory: EngineFactory | None = None,
        sleep_mode: bool | None = None,
        kv_cache_bytes: int | None = None,
        gpu_memory_utilization: float | None = None,
        dtype: str | None = None,
        background_loads: bool | None = None,
        options: BackendOptions | None = None,
        sleepers: Sleepers = SLEEPERS,
    ):
        self.spec = spec
        self.sleepers = sleepers  # the process's engines asleep, bounded (`experts.vllm_sleepers`)
        self.options = options or BackendOptions()
        self.base_model_key = spec.key
        self.loads = 0  # engines really started
        self.wakes = 0  # fast swaps: a sleeping engine woken instead of a new one started
        self.sleeps = 0
        self.sleep_mode = sleep_mode
        self.kv_cache_bytes = kv_cache_bytes
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype or default_dtype()
        self.background_loads = background_loads
        self._factory: EngineFactory = engine_factory or self._engine_in_process
        self._process: WorkerProcess | None = None  # started on the first load, kept until close()
        self._engine: VLLMEngine | None = None
        self._asleep = False
        self._folder: Path | None = None
        self._weights: list[Path] = []
        self._lock = threading.RLock()  # as in llamacpp: a second caller waits instead of racing

    @property
    def is_loaded(self) -> bool:
        return self._engine is not None and not self._asleep and not _dead(self._engine)

    @property
    def loads_in_background(self) -> bool:
        """Whether the device worker may start this engine while another model generates
        (DeviceWorker.prefetch). The engine loads in its own process, so on a GPU the load
        (disk to device) runs beside the other model's GPU work. On a CPU both need the same
        cores: measured on this 2-core machine, the swaps bench's ours half took 317 s with the
        overlap against 314 s without (the hidden loads came back as slower generation)."""
        return has_gpu() if self.background_loads is None else self.background_loads

    @property
    def is_asleep(self) -> bool:
        return self._engine is not None and self._asleep

    def validate(self) -> None:
        folder = resolve_folder(self.spec.source, self.options)
        self._weights = check_hf_folder(folder)
        self._folder = folder

    def _ensure_validated(self) -> Path:
        if self._folder is None:
            self.validate()
        assert self._folder is not None
        return self._folder

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=str(self._ensure_validated()), max_model_len=self.spec.n_ctx, sleep_mode=self.sleep_mode,
            kv_cache_bytes=self.kv_cache_bytes, gpu_memory_utilization=self.gpu_memory_utilization,
            dtype=self.dtype, weights_bytes=self._weights_bytes(),
        )

    def _engine_in_process(self, config: EngineConfig) -> VLLMEngine:
        if self._process is None or not self._process.alive:
            self._process = WorkerProcess(vllm_python(self.options.vllm_python))
        return WorkerEngine(config, self._process)

    def load(self) -> None:
        with self._lock:
            if self._engine is not None and _dead(self._engine):
                self._forget_dead_worker()
            if self._engine is not None and self._asleep:
                self._engine.wake_up()
                self._asleep = False
                self.wakes += 1
                self.sleepers.woke(self)
            elif self._engine is None:
                self._engine = self._factory(self.engine_config())
                self.loads += 1

    def unload(self) -> None:
        """Sleep when the engine can (weights paged out); otherwise stop it, keeping its process.
        A sleep is told to the process's sleepers, which may stop the oldest ones (after this
        backend's lock is let go: the stopping takes theirs)."""
        with self._lock:
            slept = self._unload()
        if slept:
            self.sleepers.slept(self, self._weights_bytes())

    def _unload(self) -> bool:
        """Whether the engine went to sleep."""
        if self._engine is not None and _dead(self._engine):
            self._forget_dead_worker()  # its weights went with its process: nothing to page out
            return False
        if self._engine is None or self._asleep:
            return False
        if self._engine.sleep_mode:
            self._engine.sleep(level=1)
            self._asleep, self.sleeps = True, self.sleeps + 1
            return True
        self._stop_engine()
        self._recycle_if_grown()
        return False

    def stop_if_asleep(self) -> None:
        """Stop the engine if it still sleeps (too many asleep: `Sleepers`), keeping its process.
        Its lock taken means it is in use (woken since it was picked): it is left, never waited
        for (the caller's worker holds its own device meanwhile)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._engine is not None and self._asleep:
                self._stop_engine()
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the engine for good, sleeping or not, and its process; the next load() starts anew."""
        with self._lock:
            self._stop_engine()
            process, self._process = self._process, None
            if process is not None:
                process.close()

    def _forget_dead_worker(self) -> None:
        """Drop an engine whose process died, and close that process (its process group, where
        a vLLM child may linger, and its log file), so the load that follows starts both anew."""
        self._engine, self._asleep = None, False
        self.sleepers.woke(self)
        process, self._process = self._process, None
        if process is not None:
            process.close()

    def _stop_engine(self) -> None:
        engine, self._engine, self._asleep = self._engine, None, False
        self.sleepers.woke(self)
        if engine is not None:
            engine.close()

    def _recycle_if_grown(self) -> None:
        """End an idle worker that has grown too much since its first engine stopped."""
        process = self._process
        growth = process.idle_growth() if process is not None else None
        if process is not None and growth is not None and growth > RECYCLE_GROWTH_BYTES:
            process.close()
            self._process = None

    def memory_bytes(self) -> int:
        """Weights in the dtype they run in (as stored unless upcast) + the KV budget if fixed; on
        a GPU with no utilisation given, what the worker asks of the card for this engine."""
        weights = self._weights_bytes()
        if has_gpu() and self.gpu_memory_utilization is None:
            return gpu_engine_bytes(weights, self.kv_cache_bytes)
        return weights + (self.kv_cache_bytes or 0)

    def _weights_bytes(self) -> int:
        folder = self._ensure_validated()
        return _in_memory(sum(w.stat().st_size for w in self._weights), folder, self.dtype)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        with self._lock:
            if self._engine is None or self._asleep:
                raise BackendError(f"{self.base_model_key}: generate() before load()")
            if not requests:
                return []
            started = time.perf_counter()
            outputs = _chat(
                self._engine,
                [[m.model_dump() for m in r.messages] for r in requests],
                [to_vllm_sampling(r.sampling) for r in requests],
            )
            elapsed = time.perf_counter() - started
        if len(outputs) != len(requests):
            raise BackendError(f"{self.base_model_key}: {len(requests)} requests, {len(outputs)} outputs")
        # The batch ran as one; each request's latency is the batch's wall time (so the planner
        # learns none of them: `traits.BackendTraits.batch_timed`).
        return [_to_generation(r.request_id, o, elapsed) for r, o in zip(requests, outputs, strict=True)]


def _dead(engine: VLLMEngine) -> bool:
    """Whether the engine's worker process has died. An engine run in this process (the tests'
    fakes) has no `alive` and lives as long as we do."""
    return getattr(engine, "alive", True) is False


def _in_memory(stored_bytes: int, folder: Path, dtype: str | None) -> int:
    """Weights' bytes once loaded: as stored, unless the engine runs them in a wider dtype."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return stored_bytes
    stored = BYTES_PER_PARAM.get(str(config.get("torch_dtype") or config.get("dtype")))
    wanted = BYTES_PER_PARAM.get(dtype or "")
    return stored_bytes * wanted // stored if stored and wanted else stored_bytes


def _chat(engine: VLLMEngine, conversations: list[Conversation], sampling: list[dict[str, Any]]) -> list[EngineOutput]:
    """The engine's batch call. vLLM refuses a whole call (ValueError) for one prompt it will not
    run; the worker answers those alone, and an engine that raises instead (one run in this
    process) gets each request retried alone here, so the error stays with its request."""
    try:
        return engine.chat(conversations, sampling)
    except ValueError:
        return [_alone(engine, c, s) for c, s in zip(conversations, sampling, strict=True)]


def _alone(engine: VLLMEngine, conversation: Conversation, sampling: dict[str, Any]) -> EngineOutput:
    try:
        return engine.chat([conversation], [sampling])[0]
    except ValueError as exc:
        return EngineOutput(text="", prompt_tokens=0, completion_tokens=0, error=str(exc))


def _to_generation(request_id: str, out: EngineOutput, latency_s: float) -> Generation:
    if out.error is not None:
        return Generation.failed(request_id, out.error, latency_s)
    if out.finish_reason in FAILED_FINISH_REASONS:
        error = f"vLLM ended the request with finish_reason {out.finish_reason!r}"
        return Generation.failed(request_id, error, latency_s)
    return Generation(
        request_id=request_id, text=out.text, prompt_tokens=out.prompt_tokens,
        completion_tokens=out.completion_tokens, latency_s=latency_s, finish_reason=finish_reason_of(out.finish_reason),
    )
