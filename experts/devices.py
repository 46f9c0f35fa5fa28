"""Device profiles (where an expert runs) and the cost model of one generation there.

The cost model is deliberately small, because the budget solver only needs it to be monotone
and roughly right:

- decode is memory-bandwidth bound at batch 1, so tokens/s scales ~ 1/params:
  ``decode_tps = tokens_per_s_at_1b / params_b`` (the same for prefill, which is compute bound
  and also linear in params);
- latency = transfer (router <-> device round trip plus payload) + prefill + decode, plus three
  fixed overheads a small model on a CPU cannot hide (0 for the accelerators): one per call
  (chat template, tokenising, sampler set-up), one per generated token (sampling and the
  Python loop around each step) and one per prompt token (work that does not shrink with the
  model: on this CPU SmolLM2-135M reads a prompt only ~1.3x faster than the 0.5B), fitted from
  measured runs (`experts/calibration.py`);
- energy = power x compute time, i.e. joules/token = power_w / tokens_per_s. Transfer time is
  not charged: the device idles while the bytes travel, and the radio/NIC cost is tiny next
  to the accelerator's.

Every quantity is non-negative and enters with a positive sign, so the cost is non-decreasing
in params, prompt tokens and output tokens (tests/experts/test_devices.py checks it).
The default profiles live in ``devices.yaml`` next to this file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Tier = Literal["edge", "server", "local"]

DEFAULT_DEVICES_FILE = "devices.yaml"


class DeviceConfigError(ValueError):
    """A device file cannot be used; the message names the file and what is wrong."""


class DeviceProfile(BaseModel):
    """Throughput, power, memory and distance of one device, at batch size 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    tier: Tier
    tokens_per_s_at_1b: float = Field(gt=0, description="decode tokens/s of a 1B-param model")
    prefill_tokens_per_s_at_1b: float = Field(gt=0, description="prompt tokens/s at 1B params")
    power_w: float = Field(gt=0, description="draw while generating")
    memory_gb: float = Field(gt=0, description="memory usable for weights")
    transfer_latency_ms: float = Field(ge=0, description="router <-> device RTT + payload")
    call_overhead_ms: float = Field(default=0.0, ge=0, description="fixed cost of one generation")
    token_overhead_ms: float = Field(default=0.0, ge=0, description="fixed cost per output token")
    prompt_token_overhead_ms: float = Field(default=0.0, ge=0, description="fixed cost per prompt token")
    tensor_parallel: bool = Field(
        default=False,
        description="a model too big for one device runs over several of them (a server node); "
        "otherwise the profile is a single device and a model runs on it alone",
    )
    calibrated_from: str | None = None

    def decode_tokens_per_s(self, params_b: float) -> float:
        return self.tokens_per_s_at_1b / _positive_params(params_b)

    def prefill_tokens_per_s(self, params_b: float) -> float:
        """Prompt tokens/s, the per-prompt-token overhead included (every reader of a prompt pays it)."""
        seconds = _positive_params(params_b) / self.prefill_tokens_per_s_at_1b + self.prompt_token_overhead_ms / 1e3
        return 1.0 / seconds

    def joules_per_token(self, params_b: float) -> float:
        return self.power_w / self.decode_tokens_per_s(params_b)


class CostEstimate(BaseModel):
    """Predicted wall time and energy of one generation (or of a whole subset)."""

    model_config = ConfigDict(frozen=True)

    latency_s: float = Field(ge=0)
    energy_j: float = Field(ge=0)


def _positive_params(params_b: float) -> float:
    if params_b <= 0:
        raise ValueError(f"params_b must be positive, got {params_b}")
    return params_b


def estimate_cost(
    device: DeviceProfile, params_b: float, prompt_tokens: int, output_tokens: int
) -> CostEstimate:
    """Latency and energy of one generation of `output_tokens` after `prompt_tokens` of prompt."""
    if prompt_tokens < 0 or output_tokens < 0:
        raise ValueError("token counts must be non-negative")
    compute_s = prompt_tokens / device.prefill_tokens_per_s(params_b)
    compute_s += output_tokens / device.decode_tokens_per_s(params_b)
    compute_s += (device.call_overhead_ms + output_tokens * device.token_overhead_ms) / 1000.0
    latency_s = device.transfer_latency_ms / 1000.0 + compute_s
    return CostEstimate(latency_s=latency_s, energy_j=device.power_w * compute_s)


def load_devices(path: str | Path | None = None) -> dict[str, DeviceProfile]:
    """Device profiles by name, from `path` or from the packaged defaults."""
    if path is None:
        source = resources.files("experts").joinpath(DEFAULT_DEVICES_FILE)
        label, text = f"packaged {DEFAULT_DEVICES_FILE}", source.read_text(encoding="utf-8")
    else:
        label = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise DeviceConfigError(f"{label}: cannot read device file ({exc})") from exc
    return parse_devices(text, label)


def parse_devices(text: str, label: str = "<devices>") -> dict[str, DeviceProfile]:
    """Parse a YAML document ``devices: [ {name, tier, ...}, ... ]`` into profiles by name."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DeviceConfigError(f"{label}: not valid YAML ({exc})") from exc
    entries = doc.get("devices") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DeviceConfigError(f"{label}: expected a top-level 'devices:' list of profiles")
    profiles: dict[str, DeviceProfile] = {}
    for i, entry in enumerate(entries):
        profile = _parse_entry(entry, f"{label}: devices[{i}]")
        if profile.name in profiles:
            raise DeviceConfigError(f"{label}: device {profile.name!r} is defined twice")
        profiles[profile.name] = profile
    return profiles


def _parse_entry(entry: object, where: str) -> DeviceProfile:
    if not isinstance(entry, dict):
        raise DeviceConfigError(f"{where}: expected a mapping, got {type(entry).__name__}")
    try:
        return DeviceProfile.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
        )
        raise DeviceConfigError(f"{where} ({entry.get('name', '?')}): {problems}") from exc
