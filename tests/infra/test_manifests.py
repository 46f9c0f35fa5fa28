"""The infra/ manifests against the schemas of what reads them, offline.

- infra/kuberay/rayservice.yaml: the KubeRay RayService v1 schema (infra/schemas/, transcribed
  from KubeRay's API types; pod templates against Kubernetes v1.33's own schemas);
- its serveConfigV2 and infra/ray/serve.yaml: Ray Serve's config model, and the import path
  must name this code's application;
- infra/ray/cluster.yaml: the cluster launcher schema that ships inside the ray package.

Each schema is also shown to reject a broken manifest, so a check that passes means something.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema
from referencing import Registry, Resource

INFRA = Path(__file__).resolve().parents[2] / "infra"
SCHEMAS = INFRA / "schemas"
Manifest = dict[str, Any]


def load(path: Path) -> Manifest:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


def rayservice_validator() -> jsonschema.Draft202012Validator:
    docs = [json.loads((SCHEMAS / n).read_text()) for n in ("rayservice-v1.json", "k8s-v1.33.json")]
    registry: Registry = Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs)
    return jsonschema.Draft202012Validator(docs[0], registry=registry)


def cluster_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    return jsonschema.Draft7Validator(schema)


def problems(validator: jsonschema.protocols.Validator, doc: Manifest) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def rayservice() -> Manifest:
    return load(INFRA / "kuberay" / "rayservice.yaml")


def serve_configs() -> list[Manifest]:
    embedded = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    return [embedded, load(INFRA / "ray" / "serve.yaml")]


def test_rayservice_matches_the_kuberay_schema():
    assert problems(rayservice_validator(), rayservice()) == []


def _worker(m: Manifest) -> Manifest:
    worker: Manifest = m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    return worker


BREAKAGES: dict[str, Callable[[Manifest], None]] = {
    "number in rayStartParams": lambda m: _worker(m)["rayStartParams"].update({"num-cpus": 4}),
    "misspelt field": lambda m: m["spec"]["rayClusterConfig"].update({"workerGroupSpec": []}),
    "worker group without maxReplicas": lambda m: _worker(m).pop("maxReplicas"),
    "container without a name": lambda m: _worker(m)["template"]["spec"]["containers"][0].pop("name"),
    "unknown pod field": lambda m: _worker(m)["template"]["spec"].update({"container": []}),
    "bad env entry": lambda m: _worker(m)["template"]["spec"]["containers"][0]["env"].append({"value": "x"}),
    "wrong kind": lambda m: m.update({"kind": "RayCluster"}),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_rayservice_schema_rejects_a_broken_manifest(breakage: str):
    broken = copy.deepcopy(rayservice())
    BREAKAGES[breakage](broken)
    assert problems(rayservice_validator(), broken)


def test_both_serve_configs_are_valid_for_ray_serve_and_deploy_the_same_applications():
    parsed = [ServeDeploySchema.model_validate(c) for c in serve_configs()]
    assert parsed[0].applications == parsed[1].applications
    assert [a.name for a in parsed[0].applications] == ["skillroute"]


def test_the_import_path_names_this_codes_application_and_deployment():
    app_cfg = ServeDeploySchema.model_validate(serve_configs()[0]).applications[0]
    module, attr = app_cfg.import_path.split(":")
    target = getattr(importlib.import_module(module), attr)
    assert isinstance(target, Application)
    assert {d.name for d in app_cfg.deployments} == {importlib.import_module(module).ingress.name}


def test_cluster_config_matches_rays_cluster_schema():
    assert problems(cluster_validator(), load(INFRA / "ray" / "cluster.yaml")) == []


def test_the_cluster_schema_rejects_a_broken_config():
    broken = load(INFRA / "ray" / "cluster.yaml")
    broken["head_start_command"] = broken.pop("head_start_ray_commands")  # misspelt: unknown key
    broken["provider"].pop("type")
    assert len(problems(cluster_validator(), broken)) == 2
