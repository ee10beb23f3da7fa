"""Cluster security settings in infra/k8s: Ray token on every Ray pod and client, namespace-private
NetworkPolicy, Prefect API auth, secrets documented, no test hooks enabled in production.

What a static check can prove: each pod template that runs Ray or talks to it (head, worker groups, the
autoscaler sidecar, RayJob submitters, the Prefect flow-run Job rendered for every deployment) carries
RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the Secret; the NetworkPolicies admit nothing from outside
the namespace except the KubeRay operator on the dashboard port. Each check is shown to fail when one
pod or one rule is wrong. (That a real Ray head refuses a client without the token is tested against a
local head elsewhere.)
"""

from __future__ import annotations

import copy
import json
import os
import re

import pytest
import yaml

from tests.infra_k8s.conftest import K8S, K8S_VERSION, REPO, find_kind
from tests.infra_k8s.test_prefect_manifests import render_job

RAY_TOKEN_SECRET = "grain-ray-token"
PREFECT_AUTH_SECRET = "grain-prefect-auth"
RAY_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001}
HELM = os.path.join(K8S, "helm")


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def _env_from_secrets(container: dict) -> set[str]:
    return {s["secretRef"]["name"] for s in container.get("envFrom") or [] if "secretRef" in s
            and not s["secretRef"].get("optional")}


def ray_auth_problem(container: dict) -> str | None:
    """Why ``container`` would not authenticate to Ray with the token, or None."""
    env = _env(container)
    if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token":
        return "RAY_AUTH_MODE is not 'token'"
    tok = env.get("RAY_AUTH_TOKEN")
    if tok is not None:
        if "value" in tok:
            return "RAY_AUTH_TOKEN is a literal value (must come from the Secret)"
        ref = (tok.get("valueFrom") or {}).get("secretKeyRef") or {}
        if ref.get("name") != RAY_TOKEN_SECRET or ref.get("key") != "RAY_AUTH_TOKEN" or ref.get("optional"):
            return f"RAY_AUTH_TOKEN does not come from Secret {RAY_TOKEN_SECRET}/RAY_AUTH_TOKEN: {ref}"
        return None
    if RAY_TOKEN_SECRET in _env_from_secrets(container):
        return None
    return "no RAY_AUTH_TOKEN"


def ray_clients(raycluster: dict, k8s_docs: dict, work_pool_template: dict, prefect_project: dict) -> dict[str, dict]:
    """Every container that runs Ray or talks to it, by a readable name."""
    spec = raycluster["spec"]
    out = {f"head/{c['name']}": c for c in spec["headGroupSpec"]["template"]["spec"]["containers"]}
    for g in spec["workerGroupSpecs"]:
        out.update({f"{g['groupName']}/{c['name']}": c for c in g["template"]["spec"]["containers"]})
    if spec.get("enableInTreeAutoscaling"):
        out["autoscaler"] = spec.get("autoscalerOptions") or {}
    for job in find_kind(k8s_docs, "RayJob"):
        for c in job["spec"]["submitterPodTemplate"]["spec"]["containers"]:
            out[f"rayjob {job['metadata']['name']}/{c['name']}"] = c
    for dep in prefect_project["deployments"]:
        job = render_job(work_pool_template, dep["work_pool"].get("job_variables", {}))
        for c in job["spec"]["template"]["spec"]["containers"]:
            out[f"flow-run {dep['name']}/{c['name']}"] = c
    return out


def test_every_ray_pod_and_client_uses_the_token(raycluster, k8s_docs, work_pool_template, prefect_project):
    clients = ray_clients(raycluster, k8s_docs, work_pool_template, prefect_project)
    assert {"head/ray-head", "gpu-80gb/ray-worker", "cpu/ray-worker", "autoscaler"} <= set(clients)
    assert any(k.startswith("rayjob ") for k in clients) and sum(k.startswith("flow-run ") for k in clients) == 4
    problems = {name: p for name, c in clients.items() if (p := ray_auth_problem(c))}
    assert not problems, problems


@pytest.mark.parametrize("where", ["cpu", "autoscaler", "rayjob", "flow-run"])
def test_the_token_check_fails_when_one_pod_lacks_it(where, raycluster, k8s_docs, work_pool_template, prefect_project):
    rc, docs, pool = copy.deepcopy(raycluster), copy.deepcopy(k8s_docs), copy.deepcopy(work_pool_template)
    if where == "cpu":
        c = next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "cpu")["template"]["spec"]["containers"][0]
        c["env"] = [e for e in c["env"] if e["name"] != "RAY_AUTH_TOKEN"]
    elif where == "autoscaler":
        rc["spec"]["autoscalerOptions"]["env"] = []
    elif where == "rayjob":
        job = find_kind(docs, "RayJob")[0]
        job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"][0]["value"] = "disabled"
    else:
        pod = pool["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
        pod["containers"][0]["envFrom"] = [s for s in pod["containers"][0]["envFrom"]
                                           if s["secretRef"]["name"] != RAY_TOKEN_SECRET]
    clients = ray_clients(rc, docs, pool, prefect_project)
    bad = [name for name, c in clients.items() if ray_auth_problem(c)]
    assert bad and all(where in name for name in bad), bad


def test_a_literal_token_is_refused():
    c = {"env": [{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "value": "hunter2"}]}
    assert "literal" in ray_auth_problem(c)


def _policies(k8s_docs) -> list[dict]:
    return find_kind(k8s_docs, "NetworkPolicy")


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"unsupported selector in the check: {selector}"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def outside_sources(policies: list[dict], pod_labels: dict, port: int) -> list[str]:
    """Peers outside the namespace that the policies admit to ``port`` of a pod with ``pod_labels``
    (NetworkPolicies are additive: any rule of any policy selecting the pod admits)."""
    out = []
    for pol in policies:
        spec = pol["spec"]
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]) or not _selects(spec["podSelector"], pod_labels):
            continue
        for rule in spec.get("ingress") or []:
            ports = {p.get("port") for p in rule.get("ports") or []}
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers:
                out.append(f"{pol['metadata']['name']}: any source")
            for peer in peers or []:
                if "ipBlock" in peer or "namespaceSelector" in peer:
                    out.append(f"{pol['metadata']['name']}: {peer}")
    return out


HEAD_LABELS = {"ray.io/cluster": "grain", "ray.io/node-type": "head", "app.kubernetes.io/component": "ray-head"}
WORKER_LABELS = {"ray.io/cluster": "grain", "ray.io/node-type": "worker"}
KUBERAY = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}}


def test_network_policies_are_valid_and_make_the_namespace_private(k8s_docs, raycluster):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    policies = _policies(k8s_docs)
    assert policies, "no NetworkPolicy under infra/k8s"
    for pol in policies:
        kubernetes_validate.validate(pol, K8S_VERSION, strict=True)
    # one policy isolates every pod of the namespace (a pod no policy selects accepts everything)
    assert any(p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"] for p in policies)
    head_ports = {p["containerPort"] for p in raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports == set(RAY_PORTS.values())
    for port in (RAY_PORTS["gcs"], RAY_PORTS["client"], 52365):  # 52365: the raylet's agent, any other port
        assert outside_sources(policies, HEAD_LABELS, port) == [], port
        assert outside_sources(policies, WORKER_LABELS, port) == [], port
    dash = outside_sources(policies, HEAD_LABELS, RAY_PORTS["dashboard"])
    assert dash and all(str(KUBERAY) in s for s in dash), dash  # only the KubeRay operator, for RayJob status
    assert outside_sources(policies, WORKER_LABELS, RAY_PORTS["dashboard"]) == []


@pytest.mark.parametrize("rule", [{}, {"from": [{"namespaceSelector": {}}]}, {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]},
                                  {"from": [KUBERAY], "ports": [{"port": 10001}]}])
def test_the_policy_check_fails_when_a_rule_opens_the_namespace(rule, k8s_docs):
    policies = copy.deepcopy(_policies(k8s_docs))
    policies[0]["spec"]["ingress"].append(rule)
    assert outside_sources(policies, HEAD_LABELS, RAY_PORTS["client"])


def test_head_is_not_exposed_outside_the_cluster(raycluster, k8s_docs):
    head = raycluster["spec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    assert not find_kind(k8s_docs, "Ingress") and not find_kind(k8s_docs, "Service")


def _load(name: str) -> dict:
    with open(os.path.join(HELM, name)) as fh:
        return yaml.safe_load(fh)


def test_prefect_server_worker_and_flow_runs_use_api_auth(work_pool_template, prefect_project):
    server = _load("prefect-server-values.yaml")
    assert server["server"]["basicAuth"] == {"enabled": True, "existingSecret": PREFECT_AUTH_SECRET}
    assert server.get("service", {}).get("type", "ClusterIP") == "ClusterIP"
    worker = _load("prefect-worker-values.yaml")["worker"]
    env = {e["name"]: e for e in worker["extraEnvVars"]}
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {"name": PREFECT_AUTH_SECRET, "key": "auth-string"}
    assert worker["config"]["workPool"] == "grain-k8s"
    for dep in prefect_project["deployments"]:
        c = render_job(work_pool_template, dep["work_pool"].get("job_variables", {}))["spec"]["template"]["spec"]["containers"][0]
        assert PREFECT_AUTH_SECRET in _env_from_secrets(c), dep["name"]  # key PREFECT_API_AUTH_STRING
        assert "PREFECT_API_AUTH_STRING" not in _env(c), "credentials belong in the Secret"


def _secret_refs(node, out: set) -> set:
    """Names of Secrets referenced anywhere in a manifest (secretKeyRef, secretRef, existingSecret)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("secretKeyRef", "secretRef") and isinstance(v, dict):
                out.add(v["name"])
            elif k == "existingSecret" and v:
                out.add(v)
            else:
                _secret_refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _secret_refs(v, out)
    return out


def test_every_secret_is_in_the_readme_table(k8s_docs, work_pool_template):
    refs: set = set()
    for docs in k8s_docs.values():
        _secret_refs(docs, refs)
    _secret_refs(work_pool_template, refs)
    for name in os.listdir(HELM):
        _secret_refs(_load(name), refs)
    assert {RAY_TOKEN_SECRET, PREFECT_AUTH_SECRET, "grain-s3"} <= refs
    with open(os.path.join(REPO, "infra", "README.md")) as fh:
        readme = fh.read()
    table = set(re.findall(r"^\| `([a-z0-9-]+)` \|", readme, flags=re.M))
    assert refs <= table, f"Secrets missing from infra/README.md's secrets table: {sorted(refs - table)}"
    assert "Ray has no auth" not in readme
    for key in ("RAY_AUTH_TOKEN", "auth-string", "PREFECT_API_AUTH_STRING"):
        assert key in readme, key


DANGEROUS_ENV = ("GRAIN_ALLOW_TEST_HOOKS", "GRAIN_URL_ALLOW_PRIVATE")
_OFF = ("", "0", "false", "no", "off", "none")


def _on(value) -> bool:
    return value is not None and str(value).strip().strip("'\"").lower() not in _OFF


def _in_text(text: str, where: str) -> list[str]:
    """``VAR=1`` / ``VAR: 1`` inside a string (a shell command, a Dockerfile RUN line)."""
    return [f"{where}: {m.group(0)}" for var in DANGEROUS_ENV
            for m in re.finditer(rf"\b{var}\b['\"]?\s*[=:]\s*['\"]?([^\s'\";,}}\]]*)", text) if _on(m.group(1))]


def env_enablers(node, where: str = "") -> list[str]:
    """Every place a parsed manifest (YAML/JSON) turns a test-only variable on: ``{name: VAR, value: '1'}``
    in any flow or block style, ``valueFrom`` (its value cannot be proven off), ``{VAR: '1'}`` maps
    (Prefect job_variables env), and ``VAR=1`` inside strings."""
    out = []
    if isinstance(node, dict):
        if node.get("name") in DANGEROUS_ENV and (_on(node.get("value")) or "valueFrom" in node):
            out.append(f"{where}: {node['name']}={node.get('value', node.get('valueFrom'))!r}")
        for k, v in node.items():
            if k in DANGEROUS_ENV and not isinstance(v, (dict, list)) and _on(v):
                out.append(f"{where}.{k}: {v!r}")
            out += env_enablers(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += env_enablers(v, f"{where}[{i}]")
    elif isinstance(node, str):
        out += _in_text(node, where)
    return out


def dockerfile_enablers(text: str, where: str = "Dockerfile") -> list[str]:
    """ENV in both forms (``ENV K=V ...`` and the legacy ``ENV K V``), and ``VAR=1`` in any other line."""
    import shlex

    out = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        if re.match(r"ENV\s", line, re.I):
            words = shlex.split(line)[1:]
            pairs = [w.split("=", 1) for w in words] if words and "=" in words[0] else [[words[0], " ".join(words[1:])]]
            out += [f"{where}: ENV {k}={v}" for k, v in pairs if k in DANGEROUS_ENV and _on(v)]
        else:
            out += _in_text(line, where)
    return out


@pytest.mark.parametrize("text", [
    "env:\n- name: GRAIN_ALLOW_TEST_HOOKS\n  value: '1'\n",
    "env: [{name: GRAIN_ALLOW_TEST_HOOKS, value: '1'}]\n",
    'env:\n- {"name": "GRAIN_URL_ALLOW_PRIVATE", "value": "true"}\n',
    "env:\n- name: GRAIN_ALLOW_TEST_HOOKS\n  valueFrom: {configMapKeyRef: {name: c, key: k}}\n",
    "job_variables:\n  env: {GRAIN_ALLOW_TEST_HOOKS: '1'}\n",
    "command: [sh, -c, 'GRAIN_ALLOW_TEST_HOOKS=1 grain annotate']\n",
])
def test_hook_scan_catches_every_yaml_form(text):
    assert env_enablers(yaml.safe_load(text)), text


@pytest.mark.parametrize("text", ["ENV GRAIN_ALLOW_TEST_HOOKS=1\n", "ENV A=2 \\\n    GRAIN_URL_ALLOW_PRIVATE='1'\n",
                                  "ENV GRAIN_ALLOW_TEST_HOOKS 1\n", "RUN GRAIN_ALLOW_TEST_HOOKS=1 grain --help\n"])
def test_hook_scan_catches_dockerfile_forms(text):
    assert dockerfile_enablers(text), text


def test_hook_scan_accepts_off_values():
    assert not env_enablers(yaml.safe_load("env: [{name: GRAIN_ALLOW_TEST_HOOKS, value: '0'}, {name: X, value: '1'}]"))
    assert not dockerfile_enablers("ENV GRAIN_ALLOW_TEST_HOOKS=0 OTHER=1\n# ENV GRAIN_ALLOW_TEST_HOOKS=1\n")


def test_no_test_hooks_or_private_urls_in_production_manifests():
    """Every manifest parsed: infra/k8s (YAML and JSON, helm values included), the root prefect.yaml, and
    the image's Dockerfile."""
    found, scanned = [], 0
    paths = [os.path.join(d, f) for d, _, files in os.walk(K8S) for f in files] + [os.path.join(REPO, "prefect.yaml")]
    for path in paths:
        with open(path) as fh:
            text = fh.read()
        if path.endswith((".yaml", ".yml")):
            docs = list(yaml.safe_load_all(text))
        elif path.endswith(".json"):
            docs = [json.loads(text)]
        else:
            continue
        scanned += 1
        found += env_enablers(docs, os.path.relpath(path, REPO))
    with open(os.path.join(REPO, "infra", "docker", "Dockerfile")) as fh:
        found += dockerfile_enablers(fh.read(), "infra/docker/Dockerfile")
    assert scanned >= 8, f"only {scanned} manifests parsed: the scan is not looking at the right files"
    assert not found, found
