"""One real MiniLM for every test here: loading it once keeps the suite quick."""

from __future__ import annotations

import pytest

from skills.embedder import Embedder, get_embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return get_embedder()
