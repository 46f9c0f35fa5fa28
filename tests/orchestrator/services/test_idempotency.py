"""IdempotencyService.once: two first requests racing on one key make one creation, and the
second gets the first's result, whatever creating takes meanwhile."""

from __future__ import annotations

import threading
from pathlib import Path

from orchestrator.services.errors import Busy
from orchestrator.services.idempotency import Claim, IdempotencyService, Prior
from orchestrator.store.db import Database, migrate
from orchestrator.store.repositories.idempotency import IdempotencyRepository

CLAIM = Claim(scope="anonymous", key="race", endpoint="/v1/batches", fingerprint="f")
HOLD_S = 1.0  # how long the first creation holds its room: time for the second to race it


def test_the_second_of_two_racing_first_requests_gets_the_first_s_result_not_a_503(tmp_path: Path) -> None:
    """The second looked the key up before the first stored it, then found the backlog's room
    taken by the first's creation: a 503 Busy for a key whose batch was accepted."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    db, creating = Database(url), threading.Event()
    service = IdempotencyService(db, retention_s=3600)

    def first(claim: Claim | None) -> str:
        creating.set()
        threading.Event().wait(HOLD_S)  # its room held while it admits (nothing sets it)
        with db.session() as s:
            IdempotencyRepository(s).add(CLAIM.row(query_ids=[7]))
        return "created"

    def second(claim: Claim | None) -> str:
        raise Busy("the backlog has no room: the first request holds it")

    results: dict[str, object] = {}
    racer = threading.Thread(target=lambda: results.update(first=service.once(CLAIM, first)))
    racer.start()
    assert creating.wait(30)
    results["second"] = service.once(CLAIM, second)
    racer.join(30)
    assert results == {"first": "created", "second": Prior([7])}
