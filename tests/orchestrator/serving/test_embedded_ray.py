"""`skillroute serve` without RAY_ADDRESS starts a Ray of its own (init_ray), even where another
cluster already runs on the machine: it joined that one's address file and failed ("When
connecting to an existing cluster, num_cpus and num_gpus must not be provided")."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from orchestrator.serving.app import init_ray
from orchestrator.settings import Settings
from tests.orchestrator.serving.test_ray_serve import free_port

pytestmark = pytest.mark.slow
WAIT_S = 60.0


@pytest.fixture
def ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Ray's temporary folder for this test alone (short: Ray's socket paths are bounded), so the
    address file it points at another cluster is not the machine's."""
    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def another_cluster(ray_tmp: Path) -> Iterator[str]:
    """A head node started by hand (`ray start --block`), ended with its process group."""
    current = ray_tmp / "ray" / "ray_current_cluster"  # where a driver looks for a cluster to join
    port = free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", "--block"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        deadline = time.monotonic() + WAIT_S
        while not (current.exists() and current.read_text().endswith(f":{port}")):
            assert proc.poll() is None and time.monotonic() < deadline, "ray start did not come up"
            time.sleep(0.1)  # polling the address file the head writes once it is up
        yield f":{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(WAIT_S)


def test_the_embedded_cluster_starts_beside_another_on_the_machine(another_cluster: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    try:
        init_ray(settings, dashboard=False)
        assert not ray.get_runtime_context().gcs_address.endswith(another_cluster)
    finally:
        ray.shutdown()
