"""Many clients at once, over real HTTP on the inline runtime: every request is answered.

The handlers await the batching window instead of holding a worker thread each, so 200
concurrent queries reach the window together (a thread pool of ~40 capped them before).
"""

from __future__ import annotations

import asyncio

import httpx

from orchestrator.api.app import create_app

CLIENTS = 200


async def send_all(url: str, path: str, bodies: list[dict[str, object]]) -> list[int]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        replies = await asyncio.gather(*(http.post(path, json=b) for b in bodies))
    return [r.status_code for r in replies]


def test_200_concurrent_routes_and_200_concurrent_queries_all_answer(container, serve) -> None:  # type: ignore[no-untyped-def]
    bodies = [{"query": f"What is {i} times {i + 1}?", "k": 2, "seed": i} for i in range(CLIENTS)]
    with serve(create_app(container)) as url:
        routes = asyncio.run(send_all(url, "/v1/routes", bodies))
        queries = asyncio.run(send_all(url, "/v1/queries", bodies))
    assert routes == [200] * CLIENTS
    assert queries == [200] * CLIENTS
    assert max(container.queries.window.batch_sizes) > 1  # they met in the window, not one by one
