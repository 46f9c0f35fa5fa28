"""The router's memory of validation questions is embedded once, at profiling, and read back at
every start (a restart, a new Serve replica) instead of being embedded again."""

from __future__ import annotations

import numpy as np
from sqlalchemy import update

from orchestrator.container import SkillRoute
from orchestrator.store.models import ValidationQuestion
from orchestrator.store.repositories.validation import ValidationRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import CountingEmbedder, mock_or_real


def stored(c: SkillRoute) -> list[ValidationQuestion]:
    with c.db.session() as s:
        return list(ValidationRepository(s).questions(c.pool.dataset))


def restarted(c: SkillRoute, embedder: Embedder) -> SkillRoute:
    again = SkillRoute(c.settings, c.pool_config, factory=mock_or_real, embedder=embedder)
    again.pool.refresh()
    return again


def test_profiling_stores_each_question_embedding_and_a_restart_reads_them(container: SkillRoute,
                                                                          embedder: Embedder) -> None:
    rows = stored(container)
    assert rows and all(r.embedding for r in rows)
    first = rows[0]
    assert np.allclose(np.frombuffer(first.embedding or b"", dtype=np.float32),
                       embedder.encode([first.payload["question"]])[0], atol=1e-5)
    counting = CountingEmbedder(embedder)
    again = restarted(container, counting)
    assert not {r.payload["question"] for r in rows} & set(counting.texts)  # none embedded again
    assert len(again.pool.snapshot.experts) == len(container.pool.snapshot.experts)
    again.close()


def test_a_set_stored_without_embeddings_is_embedded_once_then_read(container: SkillRoute,
                                                                    embedder: Embedder) -> None:
    with container.db.session() as s:
        s.execute(update(ValidationQuestion).values(embedding=None))  # a set stored before 0008
    counting = CountingEmbedder(embedder)
    restarted(container, counting).close()
    assert sum(counting.texts.values()) >= len(stored(container))
    assert all(r.embedding for r in stored(container))
    counting.texts.clear()
    restarted(container, counting).close()
    assert not {r.payload["question"] for r in stored(container)} & set(counting.texts)
