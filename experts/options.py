"""What the backends are told by whoever builds them: paths, threads, credentials.

experts/ reads no environment: the service's settings (`orchestrator.settings`) fill one of
these and hand it to `experts.factory.make_backend`; a script or test builds its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = Path.home() / ".cache" / "skillroute"


@dataclass(frozen=True)
class BackendOptions:
    data_dir: Path = DEFAULT_DATA_DIR  # assembled GGUFs under models/, exported HF folders under hf/
    llama_threads: int | None = None  # None: every core this process may use
    vllm_python: str | None = None  # None: the repository's .venv-vllm, else this interpreter
    # sent to OpenAI-compatible servers; None: no key. Kept out of the repr: the options are
    # described in logs and in the cluster's key-value store (worker_actor.configuration)
    openai_api_key: str | None = field(default=None, repr=False)
    replay_time_scale: float = 0.0  # > 0: a replay reply takes its simulated latency x this, for real

    @property
    def models_dir(self) -> Path:
        return self.data_dir.expanduser() / "models"

    @property
    def hf_dir(self) -> Path:
        return self.data_dir.expanduser() / "hf"
