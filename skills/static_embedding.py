"""A static (model2vec) embedding distilled from the packaged all-MiniLM-L6-v2, built once.

Why: a routing decision embeds its query, and on a 2-core CPU the transformer takes ~20 ms a
MMLU-Pro question (~45 a second); that one forward pass capped the service's throughput and
made a fresh replay pool spend a minute embedding its 3,007 validation questions. model2vec
runs every vocabulary token through the transformer once (`distill`, ~35 s here), reduces the
vectors by PCA to 256 dimensions and weights them by token frequency; a text's embedding is then
the mean of its tokens' rows, a lookup (~0.1 ms). Question against question it is as good as
the transformer it came from (bench/routing_quality.py, seeds 0-4, open ≤13B pool: k-NN router
k=3 over the best single model +4.85 ± 0.63 points static, +4.62 ± 0.26 transformer, before the
vote's option prior); question
against a skill's short name it is much worse (bench/keywords.py: the subject among the 3 skills
read for 36% of questions, 60% with the transformer), so only the k-NN router uses it by default
(orchestrator/settings.py, `EmbeddingSettings.kind`).

The distilled folder is kept in a cache folder shared by every data directory (built by
`python -m skills.embedder` in `scripts/setup.sh`, else on first use) and written whole or
not at all: it is built in a temporary folder beside the target and renamed into place, under
a lock, so two processes starting at once build it once and neither reads a half-written model.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PCA_DIMS = 256  # model2vec's default
_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def distilled_path(source: str, cache_dir: Path) -> Path:
    """The static model distilled from the sentence-transformer at `source`, built if absent."""
    target = cache_dir / f"static-{PCA_DIMS}-{_fingerprint(source)}"
    if _complete(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait, then find it built
        if not _complete(target):
            _build(source, target)
    return target


def _fingerprint(source: str) -> str:
    """Names the build after the source weights, so other weights never reuse it."""
    weights = sorted(Path(source).glob("*.safetensors")) or sorted(Path(source).glob("*.bin"))
    digest = hashlib.sha256(str(Path(source).resolve()).encode())
    for w in weights:
        digest.update(f"{w.name}:{w.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FILES)


def _build(source: str, target: Path) -> None:
    from model2vec.distill import distill  # imports torch and transformers: only when building

    log.info("distilling a static embedding from %s into %s (once, ~35 s on 2 cores)", source, target)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        distill(model_name=source, pca_dims=PCA_DIMS).save_pretrained(str(scratch))
        shutil.rmtree(target, ignore_errors=True)  # a folder an interrupted build left incomplete
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
