"""Streamed queries: the final generation's text goes to a live client as it is generated.

A query asked with `Ask.stream_to` is answered like every other (its experts in the batch as
usual, stored the same way when done); only its final step streams: the aggregation, or the
lone expert's answer when there is nothing to aggregate (k=1, a named expert). Its pieces go to
the sink the client opened under that id in the pipeline's `StreamHub`. The id is never stored
(`Ask.stream_to` is excluded from the stored request), so a query recovered after a crash is
answered unstreamed, to no one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

from orchestrator.domain import Ask, Decision
from orchestrator.scheduling.fleet import OnPiece

# A client's sink: (the expert writing, a piece of its text). The writer travels with the piece:
# a stand-in for a lone expert that failed writes into the same stream, and the client's chunks
# must name whoever wrote them.
Sink = Callable[[str, str], None]

AGGREGATION = -1  # the draw position of a query's aggregation (see batch._Sent)
MAX_OPEN_STREAMS = 4096  # live streaming clients at once; each is one open HTTP response


class TooManyStreams(RuntimeError):
    """More clients are streaming at once than the hub holds sinks for."""


class StreamHub:
    """Sinks of live streaming clients, by stream id: opened before the query is queued, closed
    when the client is done (or gone), so it holds at most one sink per open response."""

    def __init__(self, max_open: int = MAX_OPEN_STREAMS):
        self.max_open = max_open
        self._sinks: dict[str, Sink] = {}
        self._lock = threading.Lock()

    def open(self, stream_id: str, sink: Sink) -> None:
        with self._lock:
            if len(self._sinks) >= self.max_open:
                raise TooManyStreams(f"{self.max_open} streams are open; try again when one ends")
            self._sinks[stream_id] = sink

    def close(self, stream_id: str) -> None:
        with self._lock:
            self._sinks.pop(stream_id, None)

    def sink(self, stream_id: str) -> Sink | None:
        with self._lock:
            return self._sinks.get(stream_id)

    def __len__(self) -> int:
        return len(self._sinks)


def final_step(decision: Decision, draw: int) -> bool:
    """Whether the generation at `draw` writes the query's reply: its aggregation, or the
    answer of its only recruited draw (a stand-in for it included). Competitors never do."""
    return draw == AGGREGATION or (draw >= 0 and len(decision.recruited) == 1)


def sink_for(hub: StreamHub | None, ask: Ask, decision: Decision, draw: int, expert: str) -> OnPiece | None:
    """Where `expert`'s pieces at `draw` go: the client's sink, told who writes them, when it
    writes a streamed query's reply."""
    if hub is None or ask.stream_to is None or not final_step(decision, draw):
        return None
    sink = hub.sink(ask.stream_to)
    return None if sink is None else partial(sink, expert)
