"""Headless Chromium: what the dashboard makes of a given state (routed in the browser,
tests/browser/view.mjs). A residency lane per worker and whole model key, however alike two keys
end; the workers that did not answer named, so a lost one does not pass for an idle one; the
backlog in queries and the batches running; the lessons the store holds, named as such."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dashboards.test_dashboard_browser import ROOT, missing_browser, serving
from tests.dashboards.test_dashboard_tooltips import hostile_state

VIEW = ROOT / "tests" / "browser" / "view.mjs"
REPLAY = "replay:/work/shared/data/mmlu_pro_replay#"
MODELS = {  # keys whose last segments, or their cut forms, are alike
    "cpu": ["openai:http://host-a:8000/v1#qwen2.5-7b", "openai:http://host-b:8000/v1#qwen2.5-7b",
            "llamacpp:/models/qwen/model.gguf", "llamacpp:/models/llama/model.gguf",
            f"{REPLAY}Mistral-7B-Instruct-v0.1", f"{REPLAY}Mistral-7B-Instruct-v0.2",
            f"mock:a/{'x' * 20}one{'y' * 30}", f"mock:a/{'x' * 20}two{'y' * 30}"],
    "gpu0": ["openai:http://host-a:8000/v1#qwen2.5-7b"],  # the same model on another worker: its own lane
}
LOST = {"edge-1": "ActorDiedError: the actor died unexpectedly"}


def state(unavailable: dict[str, str]) -> dict[str, Any]:
    """Every model resident, the first also loaded and unloaded once before (two segments, one lane)."""
    now = time.time()
    segments = [{"worker": w, "model": m, "start": now - 50 + i, "end": None}
                for w, models in MODELS.items() for i, m in enumerate(models)]
    segments.insert(0, {**segments[0], "start": now - 90, "end": now - 80})
    return {**hostile_state(now), "timeline": {"now": now, "segments": segments, "unavailable_workers": unavailable},
            "scheduling": {"queries_waiting": 468, "queue_depth": 0, "batches_running": 3, "batch_sizes": [32]},
            "learning": {"lessons": {"competition": 0, "explore": 0, "feedback": 1}, "evidence": {}, "exploring": []}}


def view(container, tmp_path: Path, unavailable: dict[str, str]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What the page shows of `state(unavailable)`; `lanes`: each lane's label, `by_model`: the lanes
    each (worker, model) segments were drawn in."""
    given = state(unavailable)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(given))
    with serving(container) as url:
        out = subprocess.run(["node", str(VIEW), f"{url}/dashboard", str(path)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    shown: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert shown["errors"] == []
    shown["by_model"] = {}
    for s, lane in zip(given["timeline"]["segments"], shown["segmentLanes"], strict=True):
        shown["by_model"].setdefault((s["worker"], s["model"]), set()).add(lane)
    return shown


def names(label: str, worker: str, model: str) -> bool:
    """Whether a lane's label names this worker and model: the key's tail, or that tail cut in the middle."""
    if not label.startswith(f"{worker} · "):
        return False
    head, cut, tail = label.removeprefix(f"{worker} · ").partition("…")
    return head in model and model.endswith(tail) if cut else model.endswith(head)


@pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")
def test_a_lane_per_worker_and_model_with_labels_that_tell_them_apart(container, tmp_path: Path):
    shown = view(container, tmp_path, {})
    lanes, labels = shown["by_model"], shown["lanes"]
    assert all(len(at) == 1 for at in lanes.values())  # a model's segments share its lane
    assert len({lane for at in lanes.values() for lane in at}) == len(lanes)  # no two models share one
    assert len(set(labels)) == len(labels) == len(lanes)
    for (worker, model), (lane,) in lanes.items():
        assert names(labels[lane], worker, model), (labels[lane], worker, model)
    assert "gpu0 · qwen2.5-7b" in labels and "cpu · Mistral-7B-Instruct-v0.2" in labels  # short where unique
    assert shown["unavailable"]["visible"] is False


@pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")
def test_unavailable_workers_are_named_and_the_header_and_learning_say_what_they_count(container, tmp_path: Path):
    shown = view(container, tmp_path, LOST)
    note = shown["unavailable"]
    assert note["visible"] and "edge-1" in note["text"] and LOST["edge-1"] in note["title"]
    assert shown["stats"]["queries waiting"] == "468" and shown["stats"]["batches running"] == "3"
    assert shown["learning"].startswith("lessons held: 0 competition · 0 explore · 1 feedback")
