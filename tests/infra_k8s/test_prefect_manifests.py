"""Prefect Kubernetes work pool (base job template) and the `paper` deployments of infra/k8s/prefect.yaml."""

from __future__ import annotations

import ast
import copy
import os
import shlex

import pytest

from tests.infra_k8s.conftest import K8S_VERSION, REPO

EXPECTED_DEPLOYMENTS = {"annotate-cc12m", "pretrain-grain", "evaluate-grain", "grain-pipeline"}


def _defaults(template: dict) -> dict:
    return {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}


def render_job(template: dict, job_variables: dict) -> dict:
    """What the Kubernetes worker submits: placeholders filled from defaults + job variables, then the
    worker's own fix-ups (env dict → list of name/value, command string → args list)."""
    from prefect.utilities.templating import apply_values

    values = {**_defaults(template), **job_variables, "name": "annotate-cc12m-abc", "labels": {"app": "grain"},
              "command": "prefect flow-run execute"}
    manifest = apply_values(copy.deepcopy(template["job_configuration"]["job_manifest"]), values)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    container["args"] = shlex.split(container["args"])
    return manifest


def test_work_pool_template_is_accepted_by_prefect(work_pool_template):
    """Prefect's server-side schema checks every {{ placeholder }} is a declared variable."""
    from prefect.server.schemas.actions import WorkPoolCreate

    WorkPoolCreate(name="grain-k8s", type="kubernetes", base_job_template=work_pool_template)
    bad = copy.deepcopy(work_pool_template)
    bad["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["priorityClassName"] = "{{ priority }}"
    with pytest.raises(ValueError, match="priority"):
        WorkPoolCreate(name="grain-k8s", type="kubernetes", base_job_template=bad)


def test_rendered_job_is_a_valid_kubernetes_job(work_pool_template, prefect_project):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for dep in prefect_project["deployments"]:
        job = render_job(work_pool_template, dep["work_pool"].get("job_variables", {}))
        pod = job["spec"]["template"]["spec"]
        # What Prefect's Kubernetes worker insists on (its base-manifest check) ...
        assert pod["containers"][0]["name"] == "prefect-job"
        assert pod["restartPolicy"] == "Never" and pod["parallelism"] == 1 and pod["completions"] == 1
        # ... of which parallelism/completions sit in the pod spec, where Kubernetes ignores them:
        # drop them before the strict check of everything else.
        del pod["parallelism"], pod["completions"]
        try:
            kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{dep['name']}: {e.message} at {list(e.path)}") from None
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert env["RAY_ADDRESS"].startswith("ray://grain-head-svc."), "flows must reach the RayCluster `grain`"
        assert not any("SECRET" in k or "TOKEN" in k for k in env), "credentials belong in k8s Secrets"


def test_deployments_job_variables_fit_the_pool_schema(work_pool_template, prefect_project):
    from prefect.utilities.schema_tools import ValidationError, validate

    schema = work_pool_template["variables"]
    for dep in prefect_project["deployments"]:
        assert dep["work_pool"]["name"] == "grain-k8s"
        validate(dep["work_pool"].get("job_variables", {}), schema, raise_on_error=True, preprocess=True,
                 ignore_required=True)
    with pytest.raises(ValidationError):
        validate({"image_pull_policy": "Sometimes"}, schema, raise_on_error=True, preprocess=True, ignore_required=True)


def _flow_functions(path: str) -> dict[str, ast.FunctionDef]:
    """function name → def, for functions decorated with @flow(...) in ``path`` (parsed, not imported)."""
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                call = dec if isinstance(dec, ast.Call) else None
                name = (call.func if call else dec)
                if isinstance(name, ast.Name) and name.id == "flow":
                    out[node.name] = (node, call)
    return out


def test_deployments_match_the_flows(prefect_project):
    deps = {d["name"]: d for d in prefect_project["deployments"]}
    assert set(deps) == EXPECTED_DEPLOYMENTS
    for name, dep in deps.items():
        file, func = dep["entrypoint"].split(":")
        path = os.path.join(REPO, file)
        assert os.path.exists(path), f"{dep['entrypoint']}: {file} does not exist"
        flows = _flow_functions(path)
        assert func in flows, f"{dep['entrypoint']}: no @flow function {func}"
        node, call = flows[func]
        # `prefect deployment run NAME/NAME` only works if the flow is named like its deployment
        flow_name = next((k.value.value for k in (call.keywords if call else []) if k.arg == "name"), None)
        assert flow_name == name, f"{dep['entrypoint']}: flow name {flow_name!r} != deployment {name!r}"
        args = node.args
        names = [a.arg for a in args.args + args.kwonlyargs]
        params = dep.get("parameters", {})
        unknown = set(params) - set(names)
        assert not unknown, f"{name}: parameters {sorted(unknown)} are not arguments of {func}"
        required = names[: len(args.args) - len(args.defaults)]
        missing = set(required) - set(params)
        assert not missing, f"{name}: required flow arguments {sorted(missing)} have no value"
        for key, value in params.items():
            if key.endswith("config") and value:
                assert os.path.exists(os.path.join(REPO, value)), f"{name}: {key}={value} does not exist"


def test_prefect_pulls_nothing_and_runs_in_the_image(prefect_project):
    """Code comes with the image (/opt/grain, see infra/docker/Dockerfile), not from git at run time."""
    steps = prefect_project["pull"]
    assert steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/grain"}}]
    with open(os.path.join(REPO, "infra", "docker", "Dockerfile")) as fh:
        assert "WORKDIR /opt/grain" in fh.read()
