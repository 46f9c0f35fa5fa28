"""Refits of the k-NN router's parameters, run behind the lessons that make them due.

A refit takes ~28 s at scale. Run where `PoolState.learn` found it due, it held its caller: a
feedback request's client waited for it before the reply (every `refit_every`-th feedback), and
the learner's next batch waited too. The lesson itself is in the router before `learn` returns;
only the parameters, fitted to evidence that barely moved, come later. Asks made while a refit
runs fold into one more: it fits the evidence current when it starts, so one covers them all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Refits:
    def __init__(self, fit: Callable[[], None]):
        self._fit = fit
        self._cond = threading.Condition()
        self._wanted = self._running = self._closed = False
        self._thread: threading.Thread | None = None  # started by the first ask: most pools never refit

    def ask(self) -> None:
        """Have the parameters fitted again, behind the caller."""
        with self._cond:
            if self._closed:
                return
            self._wanted = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="refit", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def settled(self, timeout: float | None = None) -> bool:
        """Wait until no refit is asked for or running; False if `timeout` came first."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._wanted or self._running), timeout)

    def close(self) -> None:
        """Stop the thread once a refit running now ends; one asked for and not begun is dropped
        (parameters are not stored: the next start fits its own)."""
        with self._cond:
            self._closed, self._wanted = True, False
            self._cond.notify_all()

    def _loop(self) -> None:
        while self._next():
            try:
                self._fit()
            except Exception:  # the thread must outlive a failure, or no refit runs again
                log.exception("refitting the router failed; it routes by the parameters fitted last")
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()

    def _next(self) -> bool:
        """Wait for an ask; False once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._wanted or self._closed)
            if self._closed:
                return False
            self._wanted, self._running = False, True
            return True
