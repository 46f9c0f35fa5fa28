"""Workers whose actor is gone for good or cannot be placed, on a local Ray (one CPU, mock
weights): an actor killed without a restart is made anew, one another start replaced is found
under its name, a failed remaking is one unavailable worker per call, an actor Ray cannot
schedule is WorkerUnavailable (never Ray's error), and an API key reaches neither the cluster's
key-value store nor the log."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError
from ray.experimental import internal_kv

from experts.mock import MockBackend
from experts.options import BackendOptions
from experts.types import BaseModelSpec, ChatMessage, Generation, GenerationRequest, SamplingParams
from experts.workers import WorkerSpec
from orchestrator.serving.remote_worker import RemoteWorker, WorkerLost, WorkerUnavailable
from orchestrator.serving.worker_actor import NAMESPACE, actor_name, backends, spawn

pytestmark = pytest.mark.slow  # only because it starts Ray

M1 = BaseModelSpec(kind="mock", source="m1")
NO_SUCH_NODE = "ab" * 28  # a node id no node has: `skillroute serve`'s node after it left
KEY, ROTATED = "sk-OLD-SECRET-1111", "sk-NEW-SECRET-2222"


def mocks(spec: BaseModelSpec) -> MockBackend:
    return MockBackend(spec.key)


def request(rid: str, temperature: float = 0.0) -> GenerationRequest:
    return GenerationRequest(request_id=rid, messages=[ChatMessage(role="user", content=f"q{rid}")],
                             sampling=SamplingParams(temperature=temperature))


def generated(worker: RemoteWorker, rid: str, temperature: float = 0.0) -> Generation:
    [gen] = worker.generate(M1, [request(rid, temperature)])
    return gen


def recorded(name: str) -> str:
    """What the worker's actor was made with, as the cluster's key-value store holds it."""
    return str(internal_kv._internal_kv_get(actor_name(name), namespace=NAMESPACE).decode())


@contextlib.contextmanager
def named(name: str) -> Iterator[WorkerSpec]:
    """A worker's spec; afterwards its actor is killed and its recorded settings dropped (detached:
    they outlive the test otherwise)."""
    try:
        yield WorkerSpec(name=name, device="local-cpu")
    finally:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(actor_name(name), namespace=NAMESPACE), no_restart=True)
        internal_kv._internal_kv_del(actor_name(name), namespace=NAMESPACE)


def killed(actor: ActorHandle[Any]) -> None:
    """Kill the actor and return once Ray reports it dead: `ray.kill` only asks, and a call sent
    at once could still be answered (under load the test then saw no loss at all)."""
    ray.kill(actor)  # no restart: Ray's default for ray.kill
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(actor.info.remote(), timeout=10)
        except RayActorError:
            return
        except GetTimeoutError:
            continue
    raise AssertionError("the killed actor still answers after 60 s")


def test_an_actor_killed_for_good_is_made_anew_by_the_next_call(local_ray: None) -> None:
    with named("killed-t") as spec:
        renew = functools.partial(spawn, spec, 2**30, mocks)
        worker = RemoteWorker(renew(), spec, 2**30, renew)
        assert generated(worker, "before").error is None
        killed(worker.actor)
        started = time.monotonic()
        assert generated(worker, "greedy").error is None  # rerun on the actor made anew
        assert time.monotonic() - started < 5.0  # no wait for a restart that never comes
        killed(worker.actor)
        with pytest.raises(WorkerLost, match="gone for good") as lost:  # a sample is not rerun: it fails, truthfully
            generated(worker, "sampled", temperature=0.7)
        assert "Ray restarts" not in str(lost.value)
        assert generated(worker, "after", temperature=0.7).error is None


def test_an_actor_another_start_replaced_is_found_under_the_name(local_ray: None) -> None:
    with named("replaced-t") as spec:
        worker = RemoteWorker(spawn(spec, 2**30, mocks), spec, 2**30)  # no renew: only the name to go by
        assert generated(worker, "before").error is None
        fresh = spawn(spec, 2 * 2**30, mocks)  # another replica's start, other settings: kills the old one
        assert generated(worker, "after").error is None
        assert worker.actor == fresh and worker.ask("info")["memory_budget"] == 2 * 2**30


def test_an_actor_that_cannot_be_made_anew_is_unavailable_one_try_per_call(local_ray: None) -> None:
    tries: list[float] = []

    def refused() -> ActorHandle[Any]:
        tries.append(time.monotonic())
        raise RuntimeError("no room")

    with named("unmade-t") as spec:
        worker = RemoteWorker(spawn(spec, 2**30, mocks), spec, 2**30, refused)
        assert worker.resident() == set()
        killed(worker.actor)
        for call in (1, 2):
            with pytest.raises(WorkerUnavailable, match="could not be made anew .*no room"):
                generated(worker, f"r{call}")
            assert len(tries) == call


def test_an_actor_ray_cannot_schedule_is_an_unavailable_worker(local_ray: None) -> None:
    with named("nowhere-t") as spec:
        worker = RemoteWorker(spawn(spec, 2**30, mocks, home=NO_SUCH_NODE), spec, 2**30)
        with pytest.raises(WorkerUnavailable, match="has a node of the cluster room"):
            generated(worker, "r")
        with pytest.raises(WorkerUnavailable):
            list(worker.stream(M1, request("s")))


def test_an_api_key_reaches_neither_the_store_nor_the_log_and_its_rotation_is_seen(
        local_ray: None, caplog: pytest.LogCaptureFixture) -> None:
    with named("keyed-t") as spec:
        # as a release that wrote the key in plain text left it
        internal_kv._internal_kv_put(actor_name(spec.name), f'{{"backends": "{KEY}"}}'.encode(),
                                     overwrite=True, namespace=NAMESPACE)
        first = spawn(spec, 2**30, backends(BackendOptions(openai_api_key=KEY)))
        assert "sk-" not in recorded(spec.name)
        assert spawn(spec, 2**30, backends(BackendOptions(openai_api_key=ROTATED))) != first  # made anew
        assert "sk-" not in recorded(spec.name)
        assert "making it anew" in caplog.text and "sk-" not in caplog.text
