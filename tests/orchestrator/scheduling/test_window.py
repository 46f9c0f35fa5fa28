"""The batching window: size- and time-bounded, never splits a submission, routes results back."""

import threading

import pytest

from orchestrator.probe import Probe
from orchestrator.scheduling.window import BatchingWindow


def recorder():
    batches: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        batches.append(list(items))
        return [x.upper() for x in items]

    return batches, run


def test_concurrent_submissions_close_one_full_batch():
    batches, run = recorder()
    window = BatchingWindow(run, max_batch=5, max_wait_s=30)  # closes on size, not time
    futures, lock = [], threading.Lock()

    def send(i: int) -> None:
        f = window.submit([f"q{i}"])
        with lock:
            futures.append((i, f))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(f.result(timeout=10) == [f"Q{i}"] for i, f in futures)
    assert list(window.batch_sizes) == [5] and sorted(batches[0]) == [f"q{i}" for i in range(5)]
    window.close()


def test_lone_query_is_not_held_for_a_full_batch():
    _, run = recorder()
    window = BatchingWindow(run, max_batch=1000, max_wait_s=0.01)
    assert window.submit(["alone"]).result(timeout=10) == ["ALONE"]
    assert list(window.batch_sizes) == [1]
    window.close()


def test_a_submission_is_never_split():
    batches, run = recorder()
    window = BatchingWindow(run, max_batch=3, max_wait_s=30)
    a, b = window.submit(["a1", "a2", "a3", "a4"]), window.submit(["b1", "b2", "b3"])
    assert a.result(timeout=10) == ["A1", "A2", "A3", "A4"] and b.result(timeout=10) == ["B1", "B2", "B3"]
    assert batches == [["a1", "a2", "a3", "a4"], ["b1", "b2", "b3"]]  # one past max_batch runs alone
    window.close()


def test_a_submission_that_would_overfill_a_batch_waits_for_the_next():
    """README: a batch holds up to max_batch queries; a submission that would take it past that
    opens the next batch, so a short query ahead of a window-sized chunk is not held for it."""
    started, release, (batches, run) = threading.Event(), threading.Event(), recorder()

    def held(items: list[str]) -> list[str]:
        if items == ["blocker"]:
            started.set()
            assert release.wait(timeout=10)
        return run(items)

    window = BatchingWindow(held, max_batch=4, max_wait_s=0)
    window.submit(["blocker"])
    assert started.wait(timeout=10)
    short, chunk = window.submit(["short"]), window.submit([f"c{i}" for i in range(4)])
    release.set()
    assert short.result(timeout=10) == ["SHORT"] and len(chunk.result(timeout=10)) == 4
    assert batches == [["blocker"], ["short"], ["c0", "c1", "c2", "c3"]]
    window.close()


def test_a_failing_batch_fails_every_caller_in_it():
    def boom(items: list[str]) -> list[str]:
        raise ValueError("device lost")

    window = BatchingWindow(boom, max_batch=2, max_wait_s=30)
    f1, f2 = window.submit(["x"]), window.submit(["y"])
    for f in (f1, f2):
        with pytest.raises(ValueError, match="device lost"):
            f.result(timeout=10)
    assert window.submit(["z"]) is not None  # the runner survives a failed batch
    window.close()


def test_batch_sizes_kept_for_the_dashboard_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.scheduling import window as window_module

    monkeypatch.setattr(window_module, "RECENT_BATCHES", 3)
    _, run = recorder()
    window = BatchingWindow(run, max_batch=1, max_wait_s=0)
    for i in range(5):
        window.submit([f"q{i}"] * (i + 1)).result(timeout=10)
    assert list(window.batch_sizes) == [3, 4, 5]  # the newest three; older ones dropped
    window.close()


def test_a_caller_that_stops_waiting_cannot_cancel_work_others_share() -> None:
    gate, (batches, run) = threading.Event(), recorder()

    def held(items: list[str]) -> list[str]:
        gate.wait(10)
        return run(items)

    window = BatchingWindow(held, max_batch=2, max_wait_s=30)
    dropped, kept = window.submit(["a"]), window.submit(["b"])
    assert not dropped.cancel()  # a dropped client's future is already running
    gate.set()
    assert kept.result(timeout=10) == ["B"] and dropped.result(timeout=10) == ["A"]
    assert batches == [["a", "b"]]
    window.close()


def test_a_batch_closes_once_it_holds_its_predicted_work():
    batches, run = recorder()
    window = BatchingWindow(run, max_batch=100, max_wait_s=30, weigh=len, max_work=10)  # work: the item's length
    futures = [window.submit([x]) for x in ("aaaaaa", "bbbbbb", "c", "d", "eeeeeeeeee")]
    assert [f.result(timeout=10) for f in futures] == [["AAAAAA"], ["BBBBBB"], ["C"], ["D"], ["EEEEEEEEEE"]]
    # each closed by work, not by 30 s, and none past max_work: the next submission opens the next batch
    assert batches == [["aaaaaa"], ["bbbbbb", "c", "d"], ["eeeeeeeeee"]]
    window.close()


def test_without_a_wait_a_batch_is_what_queued_while_the_last_one_ran():
    release, started = threading.Event(), threading.Event()
    batches: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        batches.append(list(items))
        started.set()
        assert release.wait(timeout=10)
        return items

    window = BatchingWindow(run, max_batch=100, max_wait_s=0)
    first = window.submit(["lone"])
    assert started.wait(timeout=10)  # a lone request runs at once, no timer
    rest = [window.submit([f"q{i}"]) for i in range(3)]
    release.set()
    assert first.result(timeout=10) == ["lone"] and [f.result(timeout=10) for f in rest] == [["q0"], ["q1"], ["q2"]]
    assert batches == [["lone"], ["q0", "q1", "q2"]]
    window.close()


def test_a_query_queued_behind_a_busy_batch_waits_from_its_arrival_not_its_pickup():
    """A batch closes max_wait_s after its first query arrived: one that queued while the last
    batch ran, its window already past, is run at once, not held a whole window again."""
    now, started, release = [0.0], threading.Event(), threading.Event()

    def run(items: list[str]) -> list[str]:
        if items[0] == "busy":
            started.set()
            assert release.wait(timeout=10)
        return items

    window = BatchingWindow(run, max_batch=2, max_wait_s=30, clock=lambda: now[0])
    busy = window.submit(["busy", "full"])  # a full batch: it runs at once
    assert started.wait(timeout=10)
    late = window.submit(["late"])  # arrives at 0 s, while the busy batch runs; its window ends at 30 s
    now[0] = 31.0  # the busy batch ran past it
    release.set()
    assert late.result(timeout=10) == ["late"] and busy.result(timeout=10) == ["busy", "full"]
    window.close()


def test_a_submission_whose_weighing_raises_still_runs_and_so_does_every_later_one():
    """The weighing ran on the window's thread: its error ended the thread, and no query was answered again."""
    batches, run = recorder()

    def weigh(item: str) -> float:
        if item == "bad":
            raise ValueError("no size for this one")
        return 1.0

    window = BatchingWindow(run, max_batch=10, max_wait_s=0, weigh=weigh, max_work=10)
    assert window.submit(["bad"]).result(timeout=10) == ["BAD"]
    assert window.submit(["ok"]).result(timeout=10) == ["OK"]
    window.close()


def test_a_probe_that_raises_fails_no_query():
    """The probe was told before the batch's failures were caught: its error left the batch's
    queries unanswered for good."""

    class Broken(Probe):
        def batch_executed(self, size: int) -> None:
            raise RuntimeError("a metrics bug")

    _, run = recorder()
    window = BatchingWindow(run, max_batch=10, max_wait_s=0, probe=Broken())
    assert window.submit(["a"]).result(timeout=10) == ["A"]
    window.close()
