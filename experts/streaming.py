"""Token streams: a reply's text as it is generated, then the whole reply.

A backend that streams has `stream(request) -> Iterator[StreamEvent]`: the text in pieces, in
order, then exactly one `Generation`, the same one `generate([request])` would give (the pieces
joined are its text, unless it failed part way: then the Generation carries the error). A
backend that cannot stream (a replay, a vLLM engine) is streamed as one piece once it has
generated, so every backend can serve a streamed query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from experts.types import Generation, GenerationRequest, StreamEvent


def stream_of(backend: Any, request: GenerationRequest) -> Iterator[StreamEvent]:
    """The backend's own stream where it has one, else its whole reply as one piece."""
    own = getattr(backend, "stream", None)
    if callable(own):
        yield from own(request)
        return
    (gen,) = backend.generate([request])
    yield from whole(gen)


def whole(gen: Generation) -> Iterator[StreamEvent]:
    """A finished reply as a stream: its text in one piece (none if it failed), then itself."""
    if gen.error is None and gen.text:
        yield gen.text
    yield gen


def collect(events: Iterable[StreamEvent]) -> Generation:
    """The Generation that ends a stream (what a caller that does not watch the pieces needs)."""
    last: Generation | None = None
    for event in events:
        if isinstance(event, Generation):
            last = event
    if last is None:
        raise RuntimeError("the stream ended without its reply")
    return last


def word_pieces(text: str) -> list[str]:
    """Text in word-sized pieces (each word with the whitespace around it); joined, the text."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])
