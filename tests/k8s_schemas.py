"""Offline validation of Kubernetes objects: core kinds against the Kubernetes OpenAPI schemas
shipped in `kubernetes-validate` (strict: unknown fields are errors); our custom resources
against the schemas in manifests/crds/, with their embedded core types (pod templates,
containers, volumes, resources) checked by kubernetes-validate too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema
import yaml

from .conftest import REPO

K8S_VERSION = "1.32.0"  # Kubeflow 1.10 supports Kubernetes 1.29 to 1.31+; 1.32 is a recent common floor
CRDS = REPO / "manifests" / "crds"


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        schema = {**doc["schema"], "definitions": doc.get("definitions", {})}
        out[(f"{doc['group']}/{doc['version']}", doc["kind"])] = schema
    return out


def validate_core(obj: Mapping[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)


def _pod(name: str, spec: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
            "template": {"metadata": dict(metadata or {}), "spec": dict(spec)}}


def validate(obj: Mapping[str, Any]) -> str:
    """Validate one object; returns how ('core' or 'crd'). Raises on the first error."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    schemas = crd_schemas()
    if key not in schemas:
        validate_core(obj)
        return "core"
    jsonschema.validate(dict(obj), schemas[key])
    kind, spec = obj["kind"], obj["spec"]
    if kind == "PyTorchJob":
        for role, replica in spec["pytorchReplicaSpecs"].items():
            validate_core(_pod(f"{role.lower()}-template", replica["template"]["spec"],
                               replica["template"].get("metadata")))
    elif kind == "TrainJob":
        trainer = spec.get("trainer", {})
        for override in spec.get("podTemplateOverrides", []):
            ospec = dict(override.get("spec", {}))
            # the override's container pieces merged into the trainer container they patch
            node = {"name": "node", "image": trainer.get("image", "x"), "command": trainer.get("command", []),
                    "env": trainer.get("env", []), "resources": trainer.get("resourcesPerNode", {})}
            for c in ospec.pop("containers", []):
                if c["name"] == "node":
                    node.update(c)
            validate_core(_pod("trainjob-node", {**ospec, "containers": [node]}, override.get("metadata")))
    elif kind == "InferenceService":
        predictor = dict(spec["predictor"])
        model = predictor.pop("model", None)
        containers = predictor.pop("containers", None) or []
        if model:
            c = {
                "name": "kserve-container",
                **{
                    k: v
                    for k, v in model.items()
                    if k not in ("modelFormat", "runtime", "storageUri", "protocolVersion")
                },
            }
            containers = [c]
        pod = {
            k: v
            for k, v in predictor.items()
            if k
            not in (
                "minReplicas",
                "maxReplicas",
                "scaleTarget",
                "scaleMetric",
                "timeout",
                "canaryTrafficPercent",
                "deploymentStrategy",
            )
        }
        validate_core(_pod("predictor", {**pod, "containers": containers}))
    elif kind == "ServingRuntime":
        rest = {
            k: v
            for k, v in spec.items()
            if k in ("containers", "volumes", "nodeSelector", "tolerations", "affinity", "imagePullSecrets")
        }
        validate_core(_pod("runtime", rest))
    return "crd"
