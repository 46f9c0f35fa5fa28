"""How far a start has come: what /ready and /health report while the service comes up.

The app serves HTTP at once and runs the slow part of a start behind it — loading the pool's
profiles, profiling what is unprofiled, answering what a crash left (`container.SkillRoute`).
Until the pool is loaded, routes that need it answer 503 naming the phase; /health answers
throughout; /ready is 200 once nothing is left to run and an expert is ready.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Literal

# idle: no start was asked for (a container driven directly: tests, benches); the pool loads on first use
Phase = Literal["idle", "loading", "profiling", "recovering", "ready", "failed"]


@dataclass(frozen=True)
class StartupStatus:
    phase: Phase = "idle"
    pool_loaded: bool = False
    recovering: int = 0  # queries the last run left that are still unanswered
    profiled: tuple[int, int] = (0, 0)  # profiling answers done, of total
    error: str | None = None

    @property
    def serving(self) -> bool:
        """Whether routes that need the pool may run (it is loaded, or loads on first use)."""
        return self.phase == "idle" or self.pool_loaded

    def describe(self) -> str:
        match self.phase:
            case "loading":
                return "starting: loading the pool's profiles"
            case "profiling":
                return "starting: profiling experts ({}/{} answers)".format(*self.profiled)
            case "recovering":
                return f"recovering {self.recovering} queries left unfinished by the last run"
            case "failed":
                return f"start-up failed: {self.error}"
        return self.phase


class StartupState:
    """The current status, replaced whole on each change (readers never see half of one)."""

    def __init__(self) -> None:
        self._status, self._lock = StartupStatus(), threading.Lock()

    @property
    def status(self) -> StartupStatus:
        return self._status

    def update(self, **changes: Any) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)
