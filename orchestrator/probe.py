"""The hooks the worker, batching window, pipeline and query service call as they work.

`Probe` does nothing; `observability.metrics.Metrics` overrides it. Each component is given its
probe when it is built (the container hands every part the app's metrics), defaulting to
`NULL_PROBE`, so benches and the CLI run uninstrumented. A worker actor's worker reports its
loads to `observability.loads.LoadTimes`, which the replica reads at scrape time.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.domain import Decision, Outcome


class Probe:
    def model_loaded(self, worker: str, model: str, seconds: float) -> None:
        """A base model finished loading on `worker` after `seconds`."""

    def batch_executed(self, size: int) -> None:
        """The batching window started executing a batch of `size` queries."""

    def routed(self, decisions: Sequence[Decision], seconds: float) -> None:
        """A batch of queries was routed (skills, scores, recruits) in `seconds`."""

    def answered(self, outcomes: Sequence[Outcome]) -> None:
        """A batch of queries was answered: generations, tokens and measured latency are known."""

    def queries_finished(self, status: str, count: int) -> None:
        """`count` queries reached a final status (done | failed) in the store."""

    def learned(self, sources: Sequence[str]) -> None:
        """The router learned a lesson from each of these (competition | explore | feedback)."""

    def expert_removed(self, name: str) -> None:
        """The expert was removed: it is never recruited again, so nothing need be kept under its name."""


NULL_PROBE = Probe()
