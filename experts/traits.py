"""What a backend kind implies for the core, read from its spec without loading anything.

The core (budgets, admission, calibration) asks these questions of every expert alike instead
of testing for particular kinds: where an expert runs when its placement names no device,
whether each expert of the kind has a device of its own, whether its reply times are this
machine's compute, what a reply costs in output tokens, and whether it can answer a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from experts.backend import BackendError
from experts.cost_model import DEFAULT_DEVICE as SERVER_DEVICE
from experts.replay import COT_TOKENS, load_recording
from experts.types import BaseModelSpec

LOCAL_DEVICE = "local-cpu"  # this machine's CPU, the device profile the embedded pool runs on


@dataclass(frozen=True)
class BackendTraits:
    default_device: str = LOCAL_DEVICE  # a device of the device profiles
    own_device: bool = False  # every expert of the kind runs on servers of its own (never shares)
    computes_here: bool = False  # its reply times are this machine's compute (calibrates local-cpu)
    fixed_output_tokens: int | None = None  # a reply's cost whatever the limit (a recorded one)

    def output_tokens(self, limit: int) -> int:
        """The output tokens a reply is charged: the token limit, unless the kind fixes it."""
        return self.fixed_output_tokens if self.fixed_output_tokens is not None else limit


_COMPUTED_HERE = BackendTraits(computes_here=True)
_TRAITS = {
    "llamacpp": _COMPUTED_HERE,
    "vllm": _COMPUTED_HERE,
    "openai": BackendTraits(),  # another server's compute, placed where its placement says
    "mock": BackendTraits(),
    # a recorded real model: costed on the server its size needs, one per expert
    "replay": BackendTraits(SERVER_DEVICE, own_device=True, fixed_output_tokens=COT_TOKENS),
}


def traits(spec: BaseModelSpec) -> BackendTraits:
    return _TRAITS[spec.kind]


def prompt_scope(spec: BaseModelSpec) -> str:
    """What `check_prompt`'s verdict depends on: bases with equal scopes are checked once."""
    return f"replay:{spec.source}" if spec.kind == "replay" else spec.key


def check_prompt(spec: BaseModelSpec, text: str) -> None:
    """Raise BackendError, naming why, when this base model cannot answer `text` at all."""
    if spec.kind == "replay":
        load_recording(spec.source).find_question(text)  # a recording answers only what it holds


__all__ = ["LOCAL_DEVICE", "BackendError", "BackendTraits", "check_prompt", "prompt_scope", "traits"]
