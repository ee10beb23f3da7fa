"""JSON Schema for the KubeRay-specific part of RayCluster / RayJob (API ray.io/v1).

No package on the reachable registries ships KubeRay's CRDs (kubernetes-validate bundles only the
core Kubernetes types), so this is a hand-written subset of the CRD's openAPIV3Schema: the fields
our manifests use, their types, and the CRD's `required` lists (which include `rayStartParams`
on older operators, so we require it too). Pod templates inside are checked separately against
the real Kubernetes schemas (conftest.validate_pod_template). `additionalProperties: false` at the
KubeRay levels catches misspelt keys, which the API server would otherwise drop silently.
"""

from __future__ import annotations

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_RESOURCES = {
    "type": "object",
    "properties": {"limits": {"type": "object"}, "requests": {"type": "object"}},
    "additionalProperties": False,
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}},
}

HEAD_GROUP = {
    "type": "object",
    "required": ["rayStartParams", "template"],
    "additionalProperties": False,
    "properties": {
        # map[string]string in the CRD: `num-cpus: 0` unquoted is rejected by the API server.
        "rayStartParams": _STR_MAP,
        "template": {"type": "object", "required": ["spec"]},
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "enableIngress": {"type": "boolean"},
        "headService": {"type": "object"},
    },
}

WORKER_GROUP = {
    "type": "object",
    "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "numOfHosts": {"type": "integer", "minimum": 1},
        "rayStartParams": _STR_MAP,
        "template": {"type": "object", "required": ["spec"]},
        "scaleStrategy": {"type": "object"},
        "suspend": {"type": "boolean"},
        "idleTimeoutSeconds": {"type": "integer"},
    },
}

RAYCLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                "resources": _RESOURCES,
                "image": {"type": "string"},
                "imagePullPolicy": {"type": "string"},
                "env": {"type": "array"},
                "envFrom": {"type": "array"},
                "securityContext": {"type": "object"},
                "volumeMounts": {"type": "array"},
                "version": {"enum": ["v1", "v2"]},
            },
        },
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
        "headServiceAnnotations": _STR_MAP,
        "suspend": {"type": "boolean"},
        "managedBy": {"type": "string"},
        "gcsFaultToleranceOptions": {"type": "object"},
    },
}

RAYCLUSTER = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": _METADATA,
        "spec": RAYCLUSTER_SPEC,
    },
}

RAYJOB = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["entrypoint"],
            "additionalProperties": False,
            # exactly one way to get a cluster: create one, or select an existing one
            "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "rayClusterSpec": RAYCLUSTER_SPEC,
                "clusterSelector": _STR_MAP,
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "runtimeEnvYAML": {"type": "string"},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 0},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "submitterPodTemplate": {"type": "object", "required": ["spec"]},
                "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"},
                "entrypointResources": {"type": "string"},
                "suspend": {"type": "boolean"},
                "jobId": {"type": "string"},
                "metadata": _STR_MAP,
            },
        },
    },
}
