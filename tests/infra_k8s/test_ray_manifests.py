"""KubeRay manifests: schema, sizing against the run files, and consistency with the code."""

from __future__ import annotations

import copy
import os
import re
import shlex

import jsonschema
import pytest
import yaml

from tests.infra_k8s import kuberay_schema
from tests.infra_k8s.conftest import REPO, find_kind, validate_pod_template


def _groups(rc: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in rc["spec"].get("workerGroupSpecs", [])}


def _gpu_group(rc: dict) -> dict:
    gpu = [g for g in rc["spec"]["workerGroupSpecs"] if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert len(gpu) == 1, "expected exactly one GPU worker group"
    return gpu[0]


def _quantity(q) -> float:
    """Kubernetes quantity → float (cores or bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m, f"not a quantity: {q!r}"
    return float(m.group(1)) * units.get(m.group(2), 1.0)


def test_every_manifest_has_identity(k8s_docs):
    assert k8s_docs, "no manifests found under infra/k8s"
    for name, docs in k8s_docs.items():
        for doc in docs:
            for key in ("apiVersion", "kind", "metadata"):
                assert key in doc, f"{name}: {doc.get('kind')} lacks {key}"
            assert doc["metadata"].get("name"), f"{name}: {doc['kind']} lacks metadata.name"


def test_raycluster_matches_kuberay_schema(raycluster):
    jsonschema.validate(raycluster, kuberay_schema.RAYCLUSTER)


def test_schema_catches_typical_mistakes(raycluster):
    """The schema is not vacuous: the mistakes people make in RayCluster YAML are rejected."""
    bad = copy.deepcopy(raycluster)
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # unquoted: map[string]string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, kuberay_schema.RAYCLUSTER)
    bad = copy.deepcopy(raycluster)
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # misspelt
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, kuberay_schema.RAYCLUSTER)
    bad = copy.deepcopy(raycluster)
    del bad["spec"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, kuberay_schema.RAYCLUSTER)


def test_pod_templates_match_kubernetes_schema(raycluster, k8s_docs):
    validate_pod_template(raycluster["spec"]["headGroupSpec"]["template"], "headGroupSpec")
    for g in raycluster["spec"]["workerGroupSpecs"]:
        validate_pod_template(g["template"], f"workerGroupSpecs[{g['groupName']}]")
    for job in find_kind(k8s_docs, "RayJob"):
        if "submitterPodTemplate" in job["spec"]:
            validate_pod_template(job["spec"]["submitterPodTemplate"], f"RayJob {job['metadata']['name']}")


def test_kubernetes_schema_check_is_not_vacuous(raycluster):
    bad = copy.deepcopy(raycluster["spec"]["headGroupSpec"]["template"])
    bad["spec"]["containers"][0]["resource"] = {}  # misspelt `resources`
    with pytest.raises(AssertionError, match="resource"):
        validate_pod_template(bad, "bad")


def test_replica_bounds_and_autoscaling(raycluster):
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = _groups(raycluster)
    assert len(groups) == len(spec["workerGroupSpecs"]), "duplicate groupName"
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], name


def test_containers_have_image_and_resources(raycluster):
    pods = [raycluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in raycluster["spec"]["workerGroupSpecs"]]
    images = set()
    for pod in pods:
        for c in pod["spec"]["containers"]:
            assert c.get("image"), c["name"]
            images.add(c["image"])
            res = c.get("resources", {})
            for kind in ("cpu", "memory"):
                assert kind in res.get("requests", {}) and kind in res.get("limits", {}), f"{c['name']}: {kind}"
    # Ray and Python versions must match on every node: one image for the whole cluster.
    assert len(images) == 1, images


def test_head_runs_no_work_and_is_not_exposed(raycluster):
    head = raycluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_ray_version_matches_gpu_constraints(raycluster):
    with open(os.path.join(REPO, "constraints", "gpu.txt")) as fh:
        pins = dict(line.strip().split("==", 1) for line in fh if "==" in line and not line.startswith("#"))
    assert raycluster["spec"]["rayVersion"] == pins["ray"]


def test_gpu_group_fits_the_paper_run_files(raycluster):
    """The GPU pod must hold what configs/ ask of one GPU, and the group enough GPUs for training."""
    g = _gpu_group(raycluster)
    spec = g["template"]["spec"]
    limits = spec["containers"][0]["resources"]["limits"]
    gpus, cpus = int(limits["nvidia.com/gpu"]), _quantity(limits["cpu"])
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])), "GPU taint not tolerated"
    assert spec.get("nodeSelector"), "GPU group needs a nodeSelector example"
    assert any(v["mountPath"] == "/dev/shm" for v in spec["containers"][0].get("volumeMounts", []))

    with open(os.path.join(REPO, "configs", "annotate-paper.yaml")) as fh:
        run = yaml.safe_load(fh)["run"]
    assert run["describer_gpus"] <= gpus
    assert run["describer_cpus"] + run["task_cpus"] <= cpus
    per_gpu_grounders = int(gpus / run["grounder_gpus"])
    assert per_gpu_grounders * run["grounder_cpus"] <= cpus
    # every describer (1 engine per GPU) and grounder can be placed at maxReplicas
    need = run["describer_actors"] * run["describer_gpus"] + run["grounder_actors"] * run["grounder_gpus"]
    assert need <= g["maxReplicas"] * gpus

    train_cfg = os.path.join(REPO, "configs", "vit-b-16-cc12m.yaml")
    if os.path.exists(train_cfg):
        with open(train_cfg) as fh:
            train = yaml.safe_load(fh)["train"]
        assert train["workers"] <= g["maxReplicas"] * gpus, "not enough GPUs for the release's pretraining"
        assert train["cpus_per_worker"] <= cpus


def test_rayjob_targets_the_cluster_and_annotates_paper(raycluster, k8s_docs):
    jobs = find_kind(k8s_docs, "RayJob")
    assert jobs, "no RayJob example"
    for job in jobs:
        jsonschema.validate(job, kuberay_schema.RAYJOB)
        sel = job["spec"].get("clusterSelector")
        if sel:
            assert sel["ray.io/cluster"] == raycluster["metadata"]["name"]
    annotate = [j for j in jobs if j["spec"]["entrypoint"].startswith("grain annotate")]
    assert annotate, "no RayJob runs `grain annotate`"
    argv = shlex.split(annotate[0]["spec"]["entrypoint"])
    assert argv[argv.index("--profile") + 1] == "paper"


@pytest.mark.slow  # ~7 s: a fresh interpreter imports the annotation stage
def test_rayjob_flags_exist_in_the_annotate_cli(k8s_docs):
    """Every --flag of the RayJob's entrypoint is one `grain annotate --help` lists."""
    import subprocess
    import sys

    job = next(j for j in find_kind(k8s_docs, "RayJob") if j["spec"]["entrypoint"].startswith("grain annotate"))
    flags = {a.split("=")[0] for a in shlex.split(job["spec"]["entrypoint"]) if a.startswith("--")}
    out = subprocess.run([sys.executable, "-m", "infra.cli", "annotate", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    missing = {f for f in flags if f not in out.stdout}
    assert not missing, f"`grain annotate` has no {sorted(missing)}"
