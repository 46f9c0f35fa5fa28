"""The one protocol every way of running a model implements, and its errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from experts.types import Generation, GenerationRequest


class BackendError(Exception):
    """A backend could not do what was asked; the message names the problem for a user."""


class ModelSourceError(BackendError):
    """The model's weights or server cannot be used (missing file, not GGUF, unreachable URL)."""


@runtime_checkable
class ExpertBackend(Protocol):
    """Runs one base model. Not thread-safe: one device worker drives it at a time.

    `loads` counts how many times `load` really brought weights in; the scheduler's promise
    (each base model loaded at most once per batch) is tested against it.
    """

    base_model_key: str
    loads: int

    @property
    def is_loaded(self) -> bool: ...

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...

    def memory_bytes(self) -> int:
        """Resident footprint once loaded (an estimate before), for the device's budget."""
        ...

    def validate(self) -> None:
        """Cheap check that the source is usable, raising ModelSourceError naming the problem."""
        ...
