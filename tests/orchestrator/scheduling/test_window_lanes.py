"""Lanes: a batch starts once no running batch holds one of its devices, so batches on different
devices (or on none) run at once, those sharing one in turn, and batches start in order."""

from __future__ import annotations

import threading
from collections.abc import Collection
from concurrent.futures import Future

import pytest

from orchestrator.scheduling.window import EVERY, BatchingWindow

WAIT_S = 30  # an event not set by then means the order under test did not happen


class Runner:
    """Batches of items named `<lane>:<name>` (`-` for no lane); an item named `hold` waits for `release`."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.running = self.most = 0
        self.lock, self.release = threading.Lock(), threading.Event()
        self.entered = threading.Semaphore(0)  # one per batch that reached a `hold`

    def __call__(self, items: list[str]) -> list[str]:
        with self.lock:
            self.batches.append(list(items))
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if any(x.endswith("hold") for x in items):
                self.entered.release()
                assert self.release.wait(WAIT_S)
            return [x.upper() for x in items]
        finally:
            with self.lock:
                self.running -= 1


def lanes(item: str) -> Collection[str]:
    lane = item.split(":")[0]
    return () if lane == "-" else (lane,)


def window(run: Runner, max_running: int = 8, max_batch: int = 10) -> BatchingWindow[str, str]:
    return BatchingWindow(run, max_batch=max_batch, max_wait_s=0, lanes=lanes, max_running=max_running)


def test_batches_on_other_devices_or_none_run_beside_a_running_one() -> None:
    run = Runner()
    w = window(run)
    held = w.submit(["gpu0:hold"])
    assert run.entered.acquire(timeout=WAIT_S)
    assert w.submit(["gpu1:a"]).result(WAIT_S) == ["GPU1:A"]
    assert w.submit(["-:far"]).result(WAIT_S) == ["-:FAR"]
    assert not held.done()
    run.release.set()
    assert held.result(WAIT_S) == ["GPU0:HOLD"]
    w.close()


def test_a_submission_on_a_busy_device_opens_the_next_batch_which_waits() -> None:
    """Queued together with one that can start, it does not join its batch (which would wait
    too) and it starts once the device is free: batches start in order."""
    run = Runner()
    w = window(run)
    held = w.submit(["gpu0:hold"])
    assert run.entered.acquire(timeout=WAIT_S)
    free, busy = w.submit(["gpu1:a"]), w.submit(["gpu0:b"])
    assert free.result(WAIT_S) == ["GPU1:A"]
    with pytest.raises(TimeoutError):
        busy.result(timeout=0.5)  # ran beside the batch on its device
    assert w.depth() == 1
    run.release.set()
    assert busy.result(WAIT_S) == ["GPU0:B"] and held.done()
    assert run.batches == [["gpu0:hold"], ["gpu1:a"], ["gpu0:b"]]
    w.close()


def test_without_lanes_batches_run_one_at_a_time() -> None:
    run = Runner()
    w: BatchingWindow[str, str] = BatchingWindow(run, max_batch=1, max_wait_s=0)
    futures = [w.submit(["x:hold"]), w.submit(["y:a"])]
    assert run.entered.acquire(timeout=WAIT_S)
    with pytest.raises(TimeoutError):
        futures[1].result(timeout=0.5)
    run.release.set()
    assert [f.result(WAIT_S) for f in futures] == [["X:HOLD"], ["Y:A"]] and run.most == 1
    w.close()


def test_batches_on_no_device_are_bounded() -> None:
    run = Runner()
    w = window(run, max_running=2, max_batch=1)  # one batch each
    futures = [w.submit([f"-:{i}hold"]) for i in range(3)]
    assert run.entered.acquire(timeout=WAIT_S) and run.entered.acquire(timeout=WAIT_S)
    assert not run.entered.acquire(timeout=0.5)  # the third waits for one of two to end
    run.release.set()
    assert all(f.result(WAIT_S) for f in futures) and run.most == 2
    w.close()


def test_close_waits_for_every_running_batch() -> None:
    run = Runner()
    w = window(run, max_batch=1)
    futures = [w.submit(["gpu0:hold"]), w.submit(["gpu1:hold"])]
    assert run.entered.acquire(timeout=WAIT_S) and run.entered.acquire(timeout=WAIT_S)
    closer = threading.Thread(target=w.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # still waiting for both
    run.release.set()
    closer.join(WAIT_S)
    assert not closer.is_alive() and [f.result(0) for f in futures] == [["GPU0:HOLD"], ["GPU1:HOLD"]]


def test_a_submission_whose_devices_are_free_starts_ahead_of_one_waiting_for_its_own() -> None:
    """A /v1/batches chunk for the busy CPU held a chat to another server queued after it."""
    run = Runner()
    w = window(run, max_batch=1)
    held = w.submit(["cpu:hold"])
    assert run.entered.acquire(timeout=WAIT_S)
    waiting, far = w.submit(["cpu:chunk"]), w.submit(["-:chat"])
    assert far.result(WAIT_S) == ["-:CHAT"] and not waiting.done()
    run.release.set()
    assert waiting.result(WAIT_S) == ["CPU:CHUNK"] and held.done()
    w.close()


def test_nothing_starts_on_a_device_an_earlier_submission_waits_for() -> None:
    """Else one needing two devices could wait for good while batches on either came and went."""
    run = Runner()
    w = window(run, max_batch=1)
    held = w.submit(["gpu0:hold"])
    assert run.entered.acquire(timeout=WAIT_S)
    both = w.submit(["gpu0:x", "gpu1:y"])  # waits for gpu0
    later = w.submit(["gpu1:z"])  # gpu1 is free, but `both` waits for it
    with pytest.raises(TimeoutError):
        later.result(timeout=0.5)
    run.release.set()
    assert both.result(WAIT_S) == ["GPU0:X", "GPU1:Y"] and later.result(WAIT_S) == ["GPU1:Z"] and held.done()
    assert run.batches[1:] == [["gpu0:x", "gpu1:y"], ["gpu1:z"]]
    w.close()


def test_a_submission_whose_devices_cannot_be_read_runs_alone_and_the_window_goes_on() -> None:
    """Read on the window's thread: one raise ended it, and every query after it waited for good."""
    run, broken = Runner(), {"bad"}

    def fragile(item: str) -> Collection[str]:
        if item.split(":")[1] in broken:
            raise KeyError("expert gone from the snapshot")
        return lanes(item)

    w: BatchingWindow[str, str] = BatchingWindow(run, max_batch=1, max_wait_s=0, lanes=fragile)
    held = w.submit(["gpu0:hold"])
    assert run.entered.acquire(timeout=WAIT_S)
    bad, after = w.submit(["gpu1:bad"]), w.submit(["-:far"])
    with pytest.raises(TimeoutError):
        bad.result(timeout=0.5)  # it may need gpu0: it waits for every running batch
    assert after.result(WAIT_S) == ["-:FAR"]  # a batch on no device still runs beside
    run.release.set()
    assert bad.result(WAIT_S) == ["GPU1:BAD"] and held.done()
    assert w.submit(["gpu1:ok"]).result(WAIT_S) == ["GPU1:OK"]
    w.close()


def test_a_free_submission_starts_ahead_of_any_number_waiting() -> None:
    run = Runner()
    w = window(run, max_batch=1)
    held = w.submit(["cpu:hold"])
    assert run.entered.acquire(timeout=WAIT_S)
    waiting = [w.submit([f"cpu:{i}"]) for i in range(100)]
    assert w.submit(["-:chat"]).result(WAIT_S) == ["-:CHAT"] and not any(f.done() for f in waiting)
    run.release.set()
    assert all(f.result(WAIT_S) for f in waiting) and held.done()
    w.close()


def test_running_counts_the_batches_running_at_once() -> None:
    """What the dashboard and skillroute_batches_running read: two held batches on two devices."""
    run = Runner()
    w = window(run, max_batch=1)
    assert w.running() == 0
    futures = [w.submit(["gpu0:hold"]), w.submit(["gpu1:hold"])]
    assert run.entered.acquire(timeout=WAIT_S) and run.entered.acquire(timeout=WAIT_S)
    assert w.running() == 2 and run.running == 2
    run.release.set()
    assert [f.result(WAIT_S) for f in futures] == [["GPU0:HOLD"], ["GPU1:HOLD"]]
    w.close()  # waits for both to let go of their lanes
    assert w.running() == 0


def held_everywhere(run: Runner) -> tuple[BatchingWindow[str, str], list[Future[list[str]]]]:
    """A window where one held batch takes every device and one (of at most one) takes none:
    what is submitted next queues behind them, to be taken into batches once they end."""
    w = window(run, max_running=1)
    held = [w.submit([f"{EVERY}:hold"]), w.submit(["-:hold"])]
    assert run.entered.acquire(timeout=WAIT_S) and run.entered.acquire(timeout=WAIT_S)
    return w, held


def batches_after(run: Runner, queued: list[Future[list[str]]], held: list[Future[list[str]]]) -> list[list[str]]:
    """Release the held batches; once everything is done, the batches the queued work ran in,
    sorted (batches on different devices start in no fixed order)."""
    run.release.set()
    assert all(f.result(WAIT_S) for f in queued + held)
    return sorted(b for b in run.batches if not any(x.endswith("hold") for x in b))


def test_work_on_no_device_never_shares_a_batch_with_work_on_one() -> None:
    """A batch holds its devices until it ends: a remote chat batched with a local one held the CPU
    through the remote server's reply, and a later local chat waited for it."""
    run = Runner()
    w, held = held_everywhere(run)
    queued = [w.submit(["-:far"]), w.submit(["cpu:a"])]
    assert batches_after(run, queued, held) == [["-:far"], ["cpu:a"]]
    w.close()


def test_a_batch_takes_only_work_on_its_own_devices_and_the_rest_runs_in_batches_of_their_own() -> None:
    """Queued interleaved, the CPU's work runs as one batch (it was split at each far chat between
    them), and the far and other-device work each as one of their own."""
    run = Runner()
    w, held = held_everywhere(run)
    queued = [w.submit([x]) for x in ["cpu:c1", "-:f1", "cpu:c2", "-:f2", "gpu1:g1", "cpu:c3"]]
    assert batches_after(run, queued, held) == [["-:f1", "-:f2"], ["cpu:c1", "cpu:c2", "cpu:c3"], ["gpu1:g1"]]
    w.close()


def test_work_passed_over_keeps_its_devices_from_later_submissions() -> None:
    """gpu1:b, passed over by the CPU's batch, keeps gpu1: a later submission on the CPU and gpu1
    waits for it rather than joining the CPU's batch ahead of it."""
    run = Runner()
    w, held = held_everywhere(run)
    queued = [w.submit(["cpu:a"]), w.submit(["gpu1:b"]), w.submit(["cpu:c", "gpu1:d"]), w.submit(["gpu1:e"])]
    batches = batches_after(run, queued, held)
    assert ["cpu:a"] in batches and not any("cpu:c" in b and "cpu:a" in b for b in batches)
    w.close()


def test_work_too_big_for_the_batch_on_another_device_does_not_end_it() -> None:
    """Only work the batch would take can overfill it: gpu1's four items split the CPU's work in two."""
    run = Runner()
    w, held = held_everywhere(run)
    w.max_batch = 4
    queued = [w.submit(["cpu:c1"]), w.submit(["gpu1:g"] * 4), w.submit(["cpu:c2"]), w.submit(["cpu:c3"])]
    assert batches_after(run, queued, held) == [["cpu:c1", "cpu:c2", "cpu:c3"], ["gpu1:g"] * 4]
    w.close()


def test_batches_on_no_device_at_their_bound_keep_no_device_waiting() -> None:
    """Slow servers filling every far batch held a local chat until one of them replied."""
    run = Runner()
    w = window(run, max_running=2, max_batch=1)
    far = [w.submit([f"-:{i}hold"]) for i in range(3)]
    assert run.entered.acquire(timeout=WAIT_S) and run.entered.acquire(timeout=WAIT_S)
    assert w.submit(["gpu0:a"]).result(WAIT_S) == ["GPU0:A"]
    assert not any(f.done() for f in far)
    run.release.set()
    assert [f.result(WAIT_S) for f in far] == [["-:0HOLD"], ["-:1HOLD"], ["-:2HOLD"]] and run.most == 3
    w.close()


def test_a_bound_below_one_is_refused() -> None:
    """With none allowed, work on no device would wait for good."""
    with pytest.raises(ValueError, match="max_running must be at least 1"):
        window(Runner(), max_running=0)
