"""What a backend kind implies for the core, read from its spec without loading anything.

The core (budgets, admission, calibration) asks these questions of every expert alike instead
of testing for particular kinds: where an expert runs when its placement names no device,
whether each expert of the kind has a device of its own, whether its reply times are this
machine's compute and each reply's own (not its batch's), what kind of worker it computes on,
what a reply costs in output tokens, and whether it can answer a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from experts.backend import BackendError
from experts.cost_model import DEFAULT_DEVICE as SERVER_DEVICE
from experts.options import BackendOptions
from experts.replay import COT_TOKENS, load_recording
from experts.types import BaseModelSpec, ExpertSpec

LOCAL_DEVICE = "local-cpu"  # this machine's CPU, the device profile the embedded pool runs on
TEMPLATE_TOKENS = 16  # what a chat template adds around a system prompt and a user turn, where none is read


@dataclass(frozen=True)
class BackendTraits:
    default_device: str = LOCAL_DEVICE  # a device of the device profiles
    own_device: bool = False  # every expert of the kind runs on servers of its own (never shares)
    computes_here: bool = False  # its reply times are this machine's compute (calibrates local-cpu)
    # a reply's time is its whole generate call's (a batch decoded together): not what it alone
    # took, so it teaches no latency (a short reply batched with a long one took the long one's)
    batch_timed: bool = False
    fixed_output_tokens: int | None = None  # a reply's cost whatever the limit (a recorded one)
    # replies are looked up, not computed: a generate call may hold this many requests (sized for
    # the trip to a worker actor, not for compute); None: chunks bounded by predicted tokens
    lookup_chunk: int | None = None
    # what its compute needs of a worker: "cpu" (llama.cpp here offloads no layer to a GPU: on a
    # GPU worker it would compute on cores that worker never reserved), "gpu" (a vLLM engine),
    # None: nothing (the compute is another server's, or none)
    compute: Literal["cpu", "gpu"] | None = None
    # its calls are answered by a server of its own (an OpenAI-compatible one): they need nothing
    # of the worker's device, so they run beside the worker's other stages, not in turn with them
    served_elsewhere: bool = False
    # it streams a reply as it writes it (`stream`); one that cannot (a vLLM engine, a recording)
    # gives a streamed query its whole reply at once, so such a query is batched like any other
    streams: bool = False
    # it computes a batch's requests one after another (llama.cpp): a generate call of one request
    # hands each reply on as it is done, where a call of 16 held them all (and a profiling run's
    # progress) until the last, and lets another batch's request in between
    sequential: bool = False

    def output_tokens(self, limit: int) -> int:
        """The output tokens a reply is charged: the token limit, unless the kind fixes it."""
        return self.fixed_output_tokens if self.fixed_output_tokens is not None else limit


_TRAITS = {
    "llamacpp": BackendTraits(computes_here=True, compute="cpu", streams=True, sequential=True),
    "vllm": BackendTraits(computes_here=True, compute="gpu", batch_timed=True),
    # another server's compute, placed where its placement says
    "openai": BackendTraits(served_elsewhere=True, streams=True),
    "mock": BackendTraits(streams=True),
    # a recorded real model: costed on the server its size needs, one per expert
    "replay": BackendTraits(SERVER_DEVICE, own_device=True, fixed_output_tokens=COT_TOKENS, lookup_chunk=1024),
}


def traits(spec: BaseModelSpec) -> BackendTraits:
    return _TRAITS[spec.kind]


def prompt_scope(spec: ExpertSpec, max_tokens: int) -> str:
    """What `check_prompt`'s verdict depends on: experts with equal scopes are checked once."""
    if spec.base.kind == "replay":
        return f"replay:{spec.base.source}"  # a recording holds a question or not, whoever asks
    return f"{spec.base.key}|{max_tokens}|{spec.system_prompt or ''}"


def check_prompt(spec: ExpertSpec, text: str, max_tokens: int, options: BackendOptions | None = None) -> None:
    """Raise BackendError, naming why, when this expert cannot answer `text` at all: a recording
    that lacks the question, a prompt that with `max_tokens` to answer overflows the context."""
    base = spec.base
    if base.kind == "replay":
        load_recording(base.source, recent=True).find_question(text)
    elif base.kind in ("llamacpp", "vllm"):
        used = prompt_tokens(spec, text, options or BackendOptions())
        if used + max_tokens > base.n_ctx:
            raise BackendError(f"the prompt is {used} tokens and {spec.name} answers in up to {max_tokens}: over its "
                               f"context window of {base.n_ctx} tokens")


def known_answer(spec: BaseModelSpec, text: str) -> str | None:
    """The gold answer to `text` where this kind of backend knows it (a recording's), else None."""
    if spec.kind != "replay":
        return None
    recording = load_recording(spec.source, recent=True)
    try:
        return recording.questions[recording.find_question(text)].answer
    except BackendError:
        return None


def prompt_tokens(spec: ExpertSpec, text: str, options: BackendOptions) -> int:
    """The prompt's tokens as the expert's own tokenizer counts them, with its chat template."""
    texts = [spec.system_prompt or "", text]
    if spec.base.kind == "llamacpp":
        from experts.llamacpp_tokens import count_prompt, count_tokens

        templated = count_prompt(spec.base.source, spec.system_prompt, text, options.models_dir)
        return templated if templated is not None else count_tokens(spec.base.source, texts, options.models_dir) \
            + TEMPLATE_TOKENS
    from experts.hf_tokens import count_prompt as count_hf_prompt
    from experts.hf_tokens import count_tokens as count_hf_tokens

    templated = count_hf_prompt(spec.base.source, spec.system_prompt, text, options)
    return templated if templated is not None else count_hf_tokens(spec.base.source, texts, options) + TEMPLATE_TOKENS


__all__ = ["LOCAL_DEVICE", "BackendError", "BackendTraits", "check_prompt", "known_answer", "prompt_scope", "traits"]
