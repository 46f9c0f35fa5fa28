"""The deployment's workers: the real devices experts run on, each an expert-worker of its own.

A devices file may list them beside the device profiles:

    workers:
      - {name: server, device: h100-server, resource: server, gpus: 1}
      - {name: edge-1, device: jetson-agx-orin, resource: edge-1}

`device` names the profile its generations are costed with; `resource` is the custom resource
the worker's Ray node advertises (`ray start --resources '{"edge-1": 1}'`), which pins the
worker there; none: the node the service starts on (the `skillroute serve` driver's, else the
Serve replica's), pinned there hard. A file without `workers:` (the packaged one) means this
machine alone: one `cpu` worker on the local-cpu profile (and, under Ray, one `gpu<i>` worker
per GPU on the local-gpu profile).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from experts.devices import DeviceConfigError, DeviceProfile

LOCAL_WORKER = "cpu"
LOCAL_PROFILE = "local-cpu"
LOCAL_GPU_PROFILE = "local-gpu"  # a GPU of this node, where the devices file names no workers


class WorkerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    device: str = Field(min_length=1, max_length=64, description="The device profile it is costed with.")
    resource: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="The custom resource its node advertises; none: the service's node for "
                                             "a CPU worker, any node with a free GPU for a GPU one.")
    memory_gb: float | None = Field(default=None, gt=0, description="What may stay resident; none: the profile's.")
    cpus: float = Field(default=0.0, ge=0, description="Cores the worker reserves from Ray's scheduler.")
    gpus: float = Field(default=0.0, ge=0)


def local_workers(memory_gb: float, cpus: float = 0.0) -> list[WorkerSpec]:
    """This machine alone: the CPU worker every embedded deployment has."""
    return [WorkerSpec(name=LOCAL_WORKER, device=LOCAL_PROFILE, memory_gb=memory_gb, cpus=cpus)]


def declared_workers(path: str | Path | None, profiles: Mapping[str, DeviceProfile]) -> list[WorkerSpec]:
    """The workers a devices file lists, checked against its profiles (none: an empty list)."""
    if path is None:
        return []
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DeviceConfigError(f"{path}: cannot read workers ({exc})") from exc
    entries = doc.get("workers") if isinstance(doc, dict) else None
    return _checked([_parse(e, f"{path}: workers[{i}]") for i, e in enumerate(entries or [])], profiles, str(path))


def _parse(entry: object, where: str) -> WorkerSpec:
    try:
        return WorkerSpec.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors())
        raise DeviceConfigError(f"{where}: {problems}") from exc


def _checked(workers: list[WorkerSpec], profiles: Mapping[str, DeviceProfile], label: str) -> list[WorkerSpec]:
    names = [w.name for w in workers]
    if len(set(names)) != len(names):
        raise DeviceConfigError(f"{label}: worker names must be distinct, got {names}")
    for w in workers:
        if w.device not in profiles:
            raise DeviceConfigError(f"{label}: worker {w.name!r} names unknown device {w.device!r}; "
                                    f"known: {', '.join(sorted(profiles))}")
    return workers


def memory_bytes(worker: WorkerSpec, profiles: Mapping[str, DeviceProfile]) -> int:
    """The worker's resident-memory budget: its own, else its profile's."""
    gb = worker.memory_gb if worker.memory_gb is not None else profiles[worker.device].memory_gb
    return int(gb * 2**30)
