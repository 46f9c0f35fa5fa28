"""The service as users start it, for benches that drive it from outside (not a script).

`serve(pool, runtime)` runs `skillroute serve --runtime … --pool …` in a process group of its
own with a throwaway data directory, waits until /ready says the pool is profiled, and stops the
whole group afterwards. The benches' clients then share no interpreter (and no GIL) with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

CLI = Path(sys.executable).with_name("skillroute")
READY_WITHIN_S = 900.0  # a fresh replay pool profiles its 22 models first


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]

    def rss_mib(self) -> float:
        """Resident memory of the server and every process it started (Ray's, on that runtime)."""
        root = psutil.Process(self.process.pid)
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return round(total / 2**20, 1)


@contextmanager
def serve(pool: str, runtime: str = "inline", time_scale: float = 0.0, data_dir: str | None = None,
          env: Mapping[str, str] | None = None) -> Iterator[Served]:
    """`data_dir`: a store to reuse (profiled already, the start only loads it); unset, a
    throwaway one. `env`: settings of the server's own (SKILLROUTE_* variables), over this one's."""
    with tempfile.TemporaryDirectory() as scratch:
        data = data_dir or scratch
        port = _free_port()
        variables = {**os.environ, **(env or {}), "SKILLROUTE_DATA_DIR": data,
                     "SKILLROUTE_BACKENDS__REPLAY_TIME_SCALE": str(time_scale)}
        cmd = [str(CLI), "serve", "--runtime", runtime, "--pool", pool, "--host", "127.0.0.1", "--port", str(port)]
        if runtime == "ray":
            cmd.append("--no-dashboard")
        log = Path(scratch) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env=variables, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                served = Served(f"http://127.0.0.1:{port}", proc)
                _wait_ready(served, log)
                yield served
            finally:
                _stop(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(served: Served, log: Path) -> None:
    """Poll /ready until 200; fail with the server's log if it exits or takes too long."""
    print(f"[served] starting {served.url} (profiles the pool first)", file=sys.stderr, flush=True)
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise RuntimeError(f"the server exited ({served.process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{served.url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)  # polling interval of a readiness probe, not a stand-in for readiness
    raise TimeoutError(f"not ready within {READY_WITHIN_S:.0f} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group (the server cleans up), SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, 60.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
