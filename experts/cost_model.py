"""What a recorded model costs to run: its size from its name, then memory, latency, energy.

Replay experts answer from a recording, so their cost is simulated from the real model's size:

* Size. A table of published parameter counts first; otherwise parsed from the name
  (`Llama-2-13b` → 13e9; `Mixtral-8x7B` → 8·7e9 total, top-2 routing → 2·7e9 active;
  `SmolLM2-135M` → 0.135e9). Closed frontier models publish no size: the table holds
  order-of-magnitude guesses, flagged `estimate`; an unknown unparseable name gets the same
  frontier guess (so a model added to a recording is still costed, never rejected). A local
  GGUF file whose name says nothing is counted from its header instead (`gguf_size`).
* Memory = total parameters × 2 bytes (bf16, as the server profile assumes) × 1.2 for KV cache
  and activations; on a server node (`tensor_parallel` in its profile) the model needs
  ⌈memory / device memory⌉ devices. Any other profile is one device (a CPU, a workstation GPU,
  a Jetson): the model runs on it alone, however big.
* Latency and energy come from the device cost model (`experts.devices.estimate_cost`, the one
  the budget solver uses) at the *active* parameter count, on the `h100-server` profile by
  default. A model spread over n devices runs tensor-parallel: compute time ÷ n^0.75 (all-reduce
  overhead), energy charged for all n devices.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from experts.backend import ModelSourceError
from experts.devices import CostEstimate, DeviceProfile, estimate_cost, load_devices
from experts.gguf import GGUFInfo, check_gguf

SizeSource = Literal["known", "parsed", "estimate"]


@dataclass(frozen=True)
class ModelSize:
    total_params: float
    active_params: float
    source: SizeSource


# Published parameter counts (total, active). Names are matched case-insensitively on a
# normalised form (`_` and `.` as `-`), so `Meta-Llama-3_1-8B-Instruct` finds `llama-3-1-8b`.
_KNOWN: dict[str, tuple[float, float]] = {
    "mixtral-8x7b": (46.7e9, 12.9e9),  # Mistral AI: 46.7B total, 12.9B used per token
    "mixtral-8x22b": (141e9, 39e9),
    "phi-3-mini": (3.8e9, 3.8e9),
    "phi-3-small": (7e9, 7e9),
    "phi-3-medium": (14e9, 14e9),
    "gemma-7b": (8.5e9, 8.5e9),  # the name rounds down; the checkpoint holds 8.5B
    "command-r-plus": (104e9, 104e9),
    "command-r": (35e9, 35e9),  # c4ai-command-r-v01
    "jamba-1-5-large": (398e9, 94e9),  # AI21: hybrid SSM-Transformer MoE
    "jamba-1-5-mini": (52e9, 12e9),
}

# No public figures: guesses of the right order of magnitude, used only for simulated cost.
_ESTIMATES: dict[str, tuple[float, float]] = {
    "gemini-1-5-flash": (100e9, 20e9),
    "gemini-1-5-pro": (1000e9, 150e9),
    "gpt-4o-mini": (100e9, 15e9),
    "gpt-4o": (1000e9, 200e9),
    "claude-3-haiku": (100e9, 20e9),
    "claude-3-5-sonnet": (1000e9, 150e9),
    "claude-3-opus": (2000e9, 300e9),
}
_FRONTIER_GUESS = (1000e9, 150e9)
_TP_EXPONENT = 0.75  # n devices in tensor parallel are n^0.75 times faster (all-reduce overhead)

_MOE = re.compile(r"(?<![\d.])(\d+)x(\d+(?:\.\d+)?)b(?![a-z])")
_DENSE = re.compile(r"(?<![\d.x])(\d+(?:\.\d+)?)([bm])(?![a-z])")


@lru_cache(maxsize=16_384)  # bounded; the batcher, executor and replay ask per prompt
def approx_tokens(text: str) -> float:
    """~4/3 tokens a word: what a model's tokenizer would count, near enough, without loading one."""
    return len(text.split()) * 4 / 3


def approx_prompt_tokens(contents: Iterable[str]) -> int:
    """`approx_tokens` over a prompt's messages, rounded once."""
    return round(sum(approx_tokens(c) for c in contents))


def _normalise(name: str) -> str:
    return re.sub(r"[_.\s]+", "-", name.strip().lower().split("/")[-1])


def _lookup(table: dict[str, tuple[float, float]], norm: str) -> tuple[float, float] | None:
    """Longest table key contained in the name, so `gpt-4o-mini` beats `gpt-4o`."""
    hits = [key for key in table if key in norm]
    return table[max(hits, key=len)] if hits else None


def parse_model_size(name: str) -> ModelSize:
    """Total and active parameters of a model from its name (see the module doc for the rules)."""
    return name_size(name) or ModelSize(*_FRONTIER_GUESS, source="estimate")


def name_size(name: str) -> ModelSize | None:
    """The size the name (or the tables) gives; None where it gives none."""
    norm = _normalise(name)
    if (known := _lookup(_KNOWN, norm)) is not None:
        return ModelSize(*known, source="known")
    if (guess := _lookup(_ESTIMATES, norm)) is not None:
        return ModelSize(*guess, source="estimate")
    plain = name.lower().replace("_", "-")
    if moe := _MOE.search(plain):
        n_experts, each = int(moe.group(1)), float(moe.group(2)) * 1e9
        return ModelSize(n_experts * each, min(2, n_experts) * each, source="parsed")
    if dense := _DENSE.search(plain):
        scale = 1e9 if dense.group(2) == "b" else 1e6
        params = float(dense.group(1)) * scale
        return ModelSize(params, params, source="parsed")
    return None


def gguf_size(source: str) -> ModelSize | None:
    """Parameters counted from the tensor shapes in a GGUF file's header (no weights are read;
    `check_gguf` caches it): present in every GGUF, where `general.size_label` is optional. An
    untied output head counts beside the embeddings (Qwen2.5-0.5B: 0.63B), on the slow side.
    None: not a readable GGUF file on this machine."""
    path = Path(source).expanduser()
    if not path.is_file():
        return None
    try:
        info = check_gguf(path)
    except ModelSourceError:
        return None
    total = sum(math.prod(t.shape) for t in info.tensors)
    return ModelSize(total, _active_params(info, total), source="known") if total > 0 else None


def _active_params(info: GGUFInfo, total: int) -> float:
    """In a mixture of experts only `expert_used_count` of the `expert_count` experts' tensors
    (`*_exps`) run per token."""
    n, used = info.arch_int("expert_count"), info.arch_int("expert_used_count")
    if not (n and used):
        return total
    routed = sum(math.prod(t.shape) for t in info.tensors if "_exps" in t.name)
    return total - routed * (1 - used / n)


DEFAULT_DEVICE = "h100-server"
BYTES_PER_PARAM = 2.0  # bf16 weights, as the server profile assumes
MEMORY_OVERHEAD = 1.2  # KV cache and activations on top of the weights


@lru_cache(maxsize=1)
def default_device() -> DeviceProfile:
    devices = load_devices()
    if DEFAULT_DEVICE in devices:
        return devices[DEFAULT_DEVICE]
    return next(d for d in devices.values() if d.tier == "server")


@dataclass(frozen=True)
class ModelCost:
    """The simulated running cost of one model on a device profile."""

    size: ModelSize
    device: DeviceProfile

    @property
    def params_b(self) -> float:
        """Billions of parameters used per token: what the device cost model scales with."""
        return self.size.active_params / 1e9

    def memory_bytes(self) -> int:
        return int(self.size.total_params * BYTES_PER_PARAM * MEMORY_OVERHEAD)

    def devices_needed(self) -> int:
        """How many devices run the model tensor-parallel: one where the profile is one device,
        which would otherwise make a 14B on the local CPU predict 2.8x faster than it runs."""
        if not self.device.tensor_parallel:
            return 1
        return max(1, math.ceil(self.memory_bytes() / (self.device.memory_gb * 1e9)))

    def estimate(self, prompt_tokens: int, completion_tokens: int) -> CostEstimate:
        """Latency and energy of one request run alone (batching would amortise the weights)."""
        one = estimate_cost(self.device, self.params_b, prompt_tokens, completion_tokens)
        transfer = self.device.transfer_latency_ms / 1000.0
        n = self.devices_needed()
        compute = (one.latency_s - transfer) / n**_TP_EXPONENT
        return CostEstimate(latency_s=transfer + compute, energy_j=n * self.device.power_w * compute)


def model_cost(name: str, device: DeviceProfile | None = None) -> ModelCost:
    return ModelCost(parse_model_size(name), device or default_device())
