"""The training job's manifest: a PyTorchJob (kubeflow.org/v1) or a TrainJob
(trainer.kubeflow.org/v1alpha1), both running torchrun over the pipeline's image.

Every pod of the job mounts the run's volume (the PVC the pipeline's steps share), so the launching
step writes the job's inputs there and reads the trained adapter and the metrics back from there.
Secrets reach the training pods as env vars from Secret references (names only, never values).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reset.config.cluster import StepResources, TrainingEngine

VOLUME = "run-storage"
SCRATCH = "scratch"
SHM = "dshm"
# The library's trainer as torchrun's entry module (`torchrun ... -m <module> <args>`).
TRAINER_MODULE = "reset.models.finetune"


@dataclass
class TrainingLaunch:
    """Everything a training job needs besides the engine settings."""

    name: str
    """The job's name (a DNS-1035 label: lowercase letters, digits and '-', at most 63)."""
    namespace: str
    image: str
    trainer_args: list[str]
    """Arguments of the trainer module after `-m reset.models.finetune`."""
    claim: str
    """The run's PVC, mounted at mount_path in every training pod."""
    mount_path: str
    resources: StepResources
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_label: str = "nvidia.com/gpu.product"
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, tuple[str, str, bool]] = field(default_factory=dict)
    """env var -> (Secret name, key, optional)."""
    labels: dict[str, str] = field(default_factory=dict)


def job_name(*parts: str) -> str:
    """A valid job name from free text (run ids, step names): lowercase, '-', at most 63 chars."""
    text = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    text = re.sub(r"-+", "-", text)[:63].rstrip("-")
    if not text or not text[0].isalpha():
        text = ("j-" + text)[:63].rstrip("-")
    return text


def torchrun_command(engine: TrainingEngine, trainer_args: Sequence[str]) -> list[str]:
    """torchrun reads the rendezvous (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, ...) from the env
    vars both engines set; only the processes per node are given here."""
    return ["torchrun", f"--nproc-per-node={engine.procs_per_node}", "-m", TRAINER_MODULE, *trainer_args]


def _env(launch: TrainingLaunch) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(launch.env.items())]
    for var, (secret, key, optional) in sorted(launch.secret_env.items()):
        env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}})
    return env


def _resources(launch: TrainingLaunch) -> dict[str, Any]:
    r = launch.resources
    requests = {"cpu": r.cpu, "memory": r.memory, "ephemeral-storage": r.ephemeral_storage}
    limits: dict[str, Any] = {"memory": r.memory_limit or r.memory, "ephemeral-storage": r.ephemeral_storage}
    if r.cpu_limit:
        limits["cpu"] = r.cpu_limit
    if r.gpus:
        requests[launch.gpu_resource] = str(r.gpus)
        limits[launch.gpu_resource] = str(r.gpus)
    return {"requests": requests, "limits": limits}


def _volumes(launch: TrainingLaunch) -> list[dict[str, Any]]:
    return [
        {"name": VOLUME, "persistentVolumeClaim": {"claimName": launch.claim}},
        {"name": SCRATCH, "emptyDir": {"sizeLimit": launch.resources.ephemeral_storage}},
        # NCCL and the data loader need more shared memory than the container runtime's 64 MiB.
        {"name": SHM, "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
    ]


def _mounts(launch: TrainingLaunch) -> list[dict[str, Any]]:
    return [{"name": VOLUME, "mountPath": launch.mount_path}, {"name": SCRATCH, "mountPath": "/scratch"},
            {"name": SHM, "mountPath": "/dev/shm"}]


def _scheduling(launch: TrainingLaunch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if launch.resources.gpus:
        out["tolerations"] = [{"key": launch.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
        if launch.resources.gpu_type:
            out["nodeSelector"] = {launch.gpu_node_label: launch.resources.gpu_type}
    return out


_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                 "seccompProfile": {"type": "RuntimeDefault"}}


def pytorchjob_manifest(launch: TrainingLaunch, engine: TrainingEngine) -> dict[str, Any]:
    """A Training Operator PyTorchJob: one Master and nodes-1 Workers, container `pytorch`."""
    container = {
        "name": "pytorch",  # the Training Operator finds the training container by this name
        "image": launch.image,
        "command": torchrun_command(engine, launch.trainer_args),
        "env": [*_env(launch), {"name": "TMPDIR", "value": "/scratch"}],
        "resources": _resources(launch),
        "volumeMounts": _mounts(launch),
        "securityContext": _SECURITY,
    }
    pod_spec: dict[str, Any] = {"containers": [container], "volumes": _volumes(launch),
                                "securityContext": _POD_SECURITY, **_scheduling(launch)}
    if engine.service_account:
        pod_spec["serviceAccountName"] = engine.service_account
    template = {"metadata": {"labels": dict(launch.labels)}, "spec": pod_spec}
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if engine.nodes > 1:
        replicas["Worker"] = {"replicas": engine.nodes - 1, "restartPolicy": "Never", "template": template}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": launch.name, "namespace": launch.namespace, "labels": dict(launch.labels)},
        "spec": {
            "nprocPerNode": str(engine.procs_per_node),
            "runPolicy": {"backoffLimit": 0, "cleanPodPolicy": "None", "activeDeadlineSeconds": engine.timeout_s,
                          "ttlSecondsAfterFinished": 7 * 24 * 3600},
            "pytorchReplicaSpecs": replicas,
        },
    }


def trainjob_manifest(launch: TrainingLaunch, engine: TrainingEngine) -> dict[str, Any]:
    """A Kubeflow Trainer TrainJob (v2.1 / v2.2 field names: podTemplateOverrides) on the
    `engine.runtime` ClusterTrainingRuntime; its trainer job is named `node`."""
    trainer = {
        "image": launch.image,
        "command": torchrun_command(engine, launch.trainer_args),
        "env": [*_env(launch), {"name": "TMPDIR", "value": "/scratch"}],
        "numNodes": engine.nodes,
        "resourcesPerNode": _resources(launch),
    }
    override_spec: dict[str, Any] = {
        "volumes": _volumes(launch),
        "containers": [{"name": "node", "volumeMounts": _mounts(launch)}],
        **_scheduling(launch),
    }
    if engine.service_account:
        override_spec["serviceAccountName"] = engine.service_account
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": launch.name, "namespace": launch.namespace, "labels": dict(launch.labels)},
        "spec": {
            "runtimeRef": {"name": engine.runtime, "apiGroup": "trainer.kubeflow.org",
                           "kind": "ClusterTrainingRuntime"},
            "trainer": trainer,
            "podTemplateOverrides": [{"targetJobs": [{"name": "node"}],
                                      "metadata": {"labels": dict(launch.labels)}, "spec": override_spec}],
        },
    }


def job_manifest(launch: TrainingLaunch, engine: TrainingEngine) -> dict[str, Any]:
    if engine.engine == "pytorchjob":
        return pytorchjob_manifest(launch, engine)
    if engine.engine == "trainjob":
        return trainjob_manifest(launch, engine)
    raise ValueError(f"cluster.training.engine {engine.engine!r} runs in the step's pod: no job to launch")
