"""The deployment files: every Kubernetes manifest passes the API schema (kubernetes-validate, strict: unknown
fields fail), and the compose file runs PostgreSQL and two replicas that share it. (Docker and a cluster are not
reachable here; the Prometheus and Grafana files are checked in test_metrics.py.)"""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.30"


def _manifests() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if doc]


def test_every_kubernetes_manifest_passes_the_api_schema() -> None:
    docs = _manifests()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Service"} <= kinds
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD (prometheus-operator): no schema in the core API
            assert doc["apiVersion"].startswith("monitoring.coreos.com/")
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):  # the check itself can fail
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_deployment_runs_replicas_on_one_postgres_store() -> None:
    docs = {d["kind"]: d for d in _manifests()}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert docs["Deployment"]["spec"]["replicas"] >= 2
    assert env["GUARD_STORE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "guard-postgres"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health" and "nvidia.com/gpu" in container[
        "resources"]["limits"]
    assert pod["affinity"]["podAntiAffinity"]
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "guard-service"
    assert docs["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["image"].startswith("postgres:")
    config = next(d for d in _manifests() if d["kind"] == "ConfigMap")["data"]
    assert "GUARD_STORE_URL" not in config and "GUARD_TENSOR_PARALLEL_SIZE" in config


def test_compose_runs_postgres_and_two_replicas_that_share_only_it() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = [s for name, s in services.items() if name.startswith("guard-")]
    assert len(replicas) == 2 and "postgres" in services
    for s in replicas:
        assert s["environment"]["GUARD_STORE_URL"].startswith("postgresql://") and "@postgres:5432/" in s[
            "environment"]["GUARD_STORE_URL"]
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert s["restart"] == "unless-stopped"
    assert len({s["ports"][0] for s in replicas}) == 2
    assert len({s["volumes"][0] for s in replicas}) == 2  # nothing shared but the store
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(t.split(":")[0] for t in targets) == sorted(n for n in services if n.startswith("guard-"))
