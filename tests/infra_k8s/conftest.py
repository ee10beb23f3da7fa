"""Shared loaders for the cluster-manifest tests (infra/k8s, infra/docker)."""

from __future__ import annotations

import json
import os

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(REPO, "infra", "k8s")
# Kubernetes version whose OpenAPI schemas the pod templates are checked against (kubernetes-validate).
K8S_VERSION = "1.33.0"


def load_yaml_docs(path: str) -> list[dict]:
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


@pytest.fixture(scope="session")
def k8s_docs() -> dict[str, list[dict]]:
    """Every YAML manifest under infra/k8s, by file name (prefect.yaml is not a k8s manifest)."""
    out = {}
    for name in sorted(os.listdir(K8S)):
        if name.endswith((".yaml", ".yml")) and name != "prefect.yaml":
            out[name] = load_yaml_docs(os.path.join(K8S, name))
    return out


def find_kind(docs: dict[str, list[dict]], kind: str) -> list[dict]:
    return [d for ds in docs.values() for d in ds if d.get("kind") == kind]


@pytest.fixture(scope="session")
def raycluster(k8s_docs) -> dict:
    (rc,) = find_kind(k8s_docs, "RayCluster")
    return rc


@pytest.fixture(scope="session")
def work_pool_template() -> dict:
    with open(os.path.join(K8S, "prefect-work-pool.json")) as fh:
        return json.load(fh)


@pytest.fixture(scope="session")
def prefect_project() -> dict:
    (doc,) = load_yaml_docs(os.path.join(K8S, "prefect.yaml"))
    return doc


def validate_pod_template(template: dict, where: str) -> None:
    """Check a PodTemplateSpec against Kubernetes' own OpenAPI schema (strict: unknown fields fail),
    by wrapping it as a core/v1 PodTemplate object."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    obj = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{where}: {e.message} at {list(e.path)}") from None
