"""What a change to an expert is (`ExpertChange`), the spec it makes (`merged`) and the status
it leaves the expert in (`next_status`): checked whole before `ExpertService` writes anything."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from experts.types import ExpertSpec
from orchestrator.services.errors import Unprocessable

CHANGEABLE = ("system_prompt", "sampling", "placement", "timeout_s")
MERGED = ("sampling", "placement")  # a change names only the keys it changes


@dataclass(frozen=True)
class ExpertChange:
    """What to change: fields of `ExpertSpec` (of `sampling` and `placement`, the keys given),
    and `enabled` (None: as it is)."""

    spec: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool | None = None



def merged(old: ExpertSpec, change: Mapping[str, Any]) -> ExpertSpec:
    """The spec with the change applied; a 422 naming the field when it is not a valid spec."""
    unknown = sorted(set(change) - set(CHANGEABLE))
    if unknown:
        raise Unprocessable(f"cannot change {', '.join(unknown)}; what can change: {', '.join(CHANGEABLE)}",
                            unknown[0])
    data = old.model_dump(mode="json")
    for key, value in change.items():
        data[key] = {**data[key], **value} if key in MERGED and value is not None else value
    try:
        return ExpertSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Unprocessable(f"{where}: {first['msg']}", where) from exc


def next_status(current: str, profiled: bool, enabled: bool | None, persona: bool,
                pending: bool = False) -> tuple[str, bool]:
    """The status after a change, and whether the expert must be profiled (again). A disabled
    expert is still profiled after a persona change, so it is ready when it is enabled.
    `pending`: a profiling run of it waits in the queue or is under way (disabling stops no run,
    removing does), so enabling it before it has a profile waits for that run, queueing none."""
    if enabled is False:
        return "disabled", persona
    if enabled and current == "failed":  # a retry: the model may load, or its server be back, now
        return "profiling", not pending  # its run still ending queues it again (`ExpertService.profile_now`)
    if enabled and current == "disabled":
        return ("ready", False) if profiled and not persona else ("profiling", persona or not pending)
    if persona:
        return ("disabled" if current == "disabled" else "profiling"), True
    return current, False


__all__ = ["CHANGEABLE", "ExpertChange", "merged", "next_status"]
