"""The vLLM engines asleep in this process, bounded.

A sleeping engine (`sleep(level=1)`) keeps its weights in this host's memory (pinned, to wake
fast) and its CUDA context on the card. The worker counts only resident models against its
budget, so with one engine per registered model every swap left one more asleep: twenty 7B
models are ~280 GB of host memory. Past `budget_bytes` of sleeping weights, or `max_engines`,
the least recently slept engine is stopped (its next load starts it again: slower, not wrong).

Lock order: a backend tells `slept` after letting go of its own lock, and the stopping takes the
victim's lock alone, never under this registry's; `woke` takes only this registry's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger(__name__)
SLEEPING_SHARE = 0.5  # of this host's memory, the most that sleeping engines' weights may hold
# engines asleep at once: each keeps a CUDA context on its card (~0.5 GB, a guess, not measured here)
MAX_SLEEPING = 8


class Sleeper(Protocol):
    def stop_if_asleep(self) -> None: ...


class Sleepers:
    def __init__(self, budget_bytes: int, max_engines: int = MAX_SLEEPING):
        self.budget_bytes, self.max_engines = budget_bytes, max_engines
        self._asleep: OrderedDict[int, tuple[Sleeper, int]] = OrderedDict()  # least recently slept first
        self._lock = threading.Lock()

    def slept(self, engine: Sleeper, weights_bytes: int) -> None:
        """`engine` went to sleep holding `weights_bytes` here; the oldest ones past the bounds stop."""
        with self._lock:
            self._asleep.pop(id(engine), None)
            self._asleep[id(engine)] = (engine, weights_bytes)
            victims = self._past_bounds()
        for victim in victims:  # each alone: one that fails to stop leaves the others to stop
            try:
                victim.stop_if_asleep()
            except Exception:
                log.warning("stopping a sleeping vLLM engine failed; it may still hold its weights", exc_info=True)

    def woke(self, engine: Sleeper) -> None:
        """`engine` is awake, or stopped: it holds nothing asleep."""
        with self._lock:
            self._asleep.pop(id(engine), None)

    def holding(self) -> int:
        """The bytes of weights the engines asleep hold."""
        with self._lock:
            return sum(size for _, size in self._asleep.values())

    def _past_bounds(self) -> list[Sleeper]:
        """Take the least recently slept engines out until the rest are within the bounds (the
        newest always stays: it was just put to sleep to make room, and is the likeliest to wake)."""
        held = sum(size for _, size in self._asleep.values())
        victims: list[Sleeper] = []
        while len(self._asleep) > 1 and (held > self.budget_bytes or len(self._asleep) > self.max_engines):
            _, (engine, size) = self._asleep.popitem(last=False)
            victims.append(engine)
            held -= size
        return victims


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


SLEEPERS = Sleepers(int(host_memory_bytes() * SLEEPING_SHARE))
