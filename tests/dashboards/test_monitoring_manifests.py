"""infra/compose and infra/k8s/monitoring hang together: paths exist, names match, schemas hold.

Services and pod templates are checked against the Kubernetes v1.33 schemas vendored in
infra/schemas/ (the same ones tests/infra uses for the RayService).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

from orchestrator.api import dashboard

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose"
K8S = ROOT / "infra" / "k8s" / "monitoring"
K8S_SCHEMA = json.loads((ROOT / "infra" / "schemas" / "k8s-v1.33.json").read_text())


def k8s_validator(definition: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"{K8S_SCHEMA['$id']}#/$defs/{definition}"}
    reg: Registry = Registry().with_resource(K8S_SCHEMA["$id"], Resource.from_contents(K8S_SCHEMA))
    return jsonschema.Draft202012Validator(schema, registry=reg)


def k8s_docs() -> list[dict[str, Any]]:
    return [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def test_k8s_services_and_pod_templates_match_the_kubernetes_schemas() -> None:
    docs = k8s_docs()
    service, pod = k8s_validator("io.k8s.api.core.v1.Service"), k8s_validator("io.k8s.api.core.v1.PodTemplateSpec")
    for d in docs:
        if d["kind"] == "Service":
            assert not list(service.iter_errors(d)), d["metadata"]["name"]
        if d["kind"] == "Deployment":
            assert not list(pod.iter_errors(d["spec"]["template"])), d["metadata"]["name"]
            assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    assert {"ConfigMap", "Deployment", "Service"} <= {d["kind"] for d in docs}


def test_k8s_config_maps_exist_and_prometheus_scrapes_the_serve_service() -> None:
    docs = k8s_docs()
    maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"} | {"skillroute-grafana-dashboards"}
    for d in docs:
        if d["kind"] == "Deployment":
            for v in d["spec"]["template"]["spec"]["volumes"]:
                assert "configMap" not in v or v["configMap"]["name"] in maps
    prom = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "skillroute-prometheus")
    targets = yaml.safe_load(prom["data"]["prometheus.yml"])["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["skillroute-serve-svc:8000"]
    assert "skillroute-serve-svc" in (ROOT / "infra" / "kuberay" / "rayservice.yaml").read_text()


def test_compose_mounts_exist_and_prometheus_scrapes_the_app() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE / src).exists(), f"{name}: {src}"
    scrape = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics" and scrape["static_configs"][0]["targets"] == ["skillroute:8000"]
    assert "skillroute" in compose["services"]


def test_the_image_ships_the_dashboard_where_the_app_looks_for_it() -> None:
    """The image pip-installs the package (no repository beside it), so /dashboard serves the files
    from dashboards/web under the working directory: the Dockerfile must COPY them there."""
    lines = [ln.split() for ln in (ROOT / "infra" / "docker" / "Dockerfile").read_text().splitlines()]
    workdir = Path(next(ln[1] for ln in lines if ln[:1] == ["WORKDIR"]))
    copied = {Path(ln[-2]): workdir / ln[-1] for ln in lines if ln[:1] == ["COPY"] and len(ln) >= 3}
    web = dashboard.SOURCE_WEB_DIR.relative_to(ROOT)  # where the app looks, beside the source or the cwd
    assert copied.get(web) == workdir / web and (ROOT / web / "index.html").is_file()
