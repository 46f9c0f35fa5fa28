"""What a model of a given size costs to run: memory, latency and energy from its parameter count.

Replay experts answer from a recording, so their cost is simulated. The model is deliberately
simple and stated here so budgets (MoE^2) can be reasoned about:

* Size. A table of known models (published figures) first; otherwise parsed from the name
  (`Llama-2-13b` → 13e9; `Mixtral-8x7B` → 8·7e9 total, top-2 routing → 2·7e9 active;
  `SmolLM2-135M` → 0.135e9). Closed frontier models publish no size: the table holds
  order-of-magnitude guesses, flagged `estimate`; an unknown unparseable name gets the same
  frontier guess (so a model added to a recording is still costed, never rejected).
* Memory = total parameters × bytes per parameter (bf16) × overhead for KV cache/activations.
* Latency on the reference device (one H100-class accelerator, or as many as the weights need,
  tensor-parallel with speed-up n^0.75 for communication): prefill is compute-bound,
  2·N_active FLOPs per prompt token at the device's effective FLOP/s; decode is memory-bound,
  every new token streams the active weights once from HBM.
* Energy = devices needed × their board power × latency (busy the whole time).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

SizeSource = Literal["known", "parsed", "estimate"]


@dataclass(frozen=True)
class ReferenceDevice:
    """One accelerator of the serving fleet; defaults are an H100 SXM at realistic efficiency."""

    memory_bytes: float = 80e9
    flops_per_s: float = 989e12 * 0.4  # bf16 dense peak × model-FLOPs utilisation in prefill
    bandwidth_bytes_per_s: float = 3.35e12 * 0.6  # HBM3 peak × achievable share in decode
    power_w: float = 700.0
    request_overhead_s: float = 0.02  # scheduling, tokenisation, first-token setup


@dataclass(frozen=True)
class ModelSize:
    total_params: float
    active_params: float
    source: SizeSource


@dataclass(frozen=True)
class CostEstimate:
    latency_s: float
    energy_j: float


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


def _normalise(name: str) -> str:
    return re.sub(r"[_.\s]+", "-", name.strip().lower().split("/")[-1])


def _lookup(table: dict[str, tuple[float, float]], norm: str) -> tuple[float, float] | None:
    """Longest table key contained in the name, so `gpt-4o-mini` beats `gpt-4o`."""
    hits = [key for key in table if key in norm]
    return table[max(hits, key=len)] if hits else None


def parse_model_size(name: str) -> ModelSize:
    """Total and active parameters of a model from its name (see the module doc for the rules)."""
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
    return ModelSize(*_FRONTIER_GUESS, source="estimate")


@dataclass(frozen=True)
class ModelCost:
    """The simulated running cost of one model on the reference device."""

    size: ModelSize
    device: ReferenceDevice = ReferenceDevice()
    bytes_per_param: float = 2.0  # bf16 weights
    memory_overhead: float = 1.2  # KV cache and activations on top of the weights

    def memory_bytes(self) -> int:
        return int(self.size.total_params * self.bytes_per_param * self.memory_overhead)

    def devices_needed(self) -> int:
        return max(1, math.ceil(self.memory_bytes() / self.device.memory_bytes))

    def estimate(self, prompt_tokens: int, completion_tokens: int) -> CostEstimate:
        """Latency and energy of one request run alone (batching would amortise the weights)."""
        n = self.devices_needed()
        speedup = n**_TP_EXPONENT
        flops = 2.0 * self.size.active_params * max(prompt_tokens, 0)
        prefill = flops / (self.device.flops_per_s * speedup)
        weights = self.size.active_params * self.bytes_per_param
        decode = max(completion_tokens, 0) * weights / (self.device.bandwidth_bytes_per_s * speedup)
        latency = self.device.request_overhead_s + prefill + decode
        return CostEstimate(latency_s=latency, energy_j=latency * n * self.device.power_w)


def model_cost(name: str, device: ReferenceDevice | None = None) -> ModelCost:
    return ModelCost(parse_model_size(name), device or ReferenceDevice())
