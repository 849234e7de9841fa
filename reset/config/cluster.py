"""The compile-time cluster settings (kfp-kubernetes): the image, Secrets by name, per-step pod
resources, the run's volume, the training engine, shards, caching and retries. Ignored by local
runs; applied to the compiled pipelines by pipelines/cluster.py. Step names are those of
reset/config/steps.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from reset.config.base import NonNegativeInt, PositiveInt, Section
from reset.config.steps import STEP_NAMES_ALL, cacheable_steps, s3_steps

_QUANTITY = r"^([0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?)?$"
Quantity = Annotated[str, Field(pattern=_QUANTITY)]
StepName = Literal[STEP_NAMES_ALL]  # type: ignore[valid-type]
_K8S_NAME = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$"
K8sName = Annotated[str, Field(pattern=_K8S_NAME, max_length=253)]


class StepResources(Section):
    """Kubernetes resources of one step's pod (under a training job: of each training node)."""

    cpu: Quantity = "2"
    """CPU request (Kubernetes quantity: 2, 500m)."""
    cpu_limit: Quantity = ""
    """CPU limit (empty = none: the pod may use idle cores)."""
    memory: Quantity = "8Gi"
    """Memory request."""
    memory_limit: Quantity = ""
    """Memory limit (empty = the request)."""
    ephemeral_storage: Quantity = "10Gi"
    """Scratch space: an emptyDir of this size limit at /scratch (TMPDIR). KFP 2.17's task spec has
    no ephemeral-storage request; the size limit is enforced by the kubelet (eviction)."""
    gpus: NonNegativeInt = 0
    """GPUs (cluster.gpu_resource) per pod; under a training job, per node."""
    gpu_type: str = ""
    """Node selector value for cluster.gpu_node_label, e.g. NVIDIA-A100-SXM4-80GB (empty = any GPU)."""
    timeout_s: NonNegativeInt = 0
    """The pod's activeDeadlineSeconds (0 = no timeout)."""


def _res(cpu: str, memory: str, scratch: str, timeout_s: int, gpus: int = 0) -> StepResources:
    return StepResources(cpu=cpu, memory=memory, ephemeral_storage=scratch, timeout_s=timeout_s, gpus=gpus)


def _default_resources() -> dict[str, StepResources]:
    """Per-step defaults sized for the paper's 7B run (see configs/paper-7b.yaml)."""
    return {
        "start-run": _res("500m", "1Gi", "1Gi", 900),
        "finish-run": _res("500m", "1Gi", "1Gi", 900),
        "mix": _res("2", "8Gi", "20Gi", 3 * 3600),
        "finetune-mtl": _res("8", "64Gi", "50Gi", 48 * 3600, gpus=1),
        "generate": _res("8", "64Gi", "50Gi", 24 * 3600, gpus=1),
        "judge": _res("4", "16Gi", "20Gi", 24 * 3600),
        "select": _res("1", "4Gi", "5Gi", 3600),
        "finetune-reset": _res("8", "64Gi", "50Gi", 48 * 3600, gpus=1),
        "evaluate": _res("8", "64Gi", "50Gi", 24 * 3600, gpus=1),
        "register": _res("4", "48Gi", "50Gi", 4 * 3600),
        "promote": _res("8", "64Gi", "50Gi", 24 * 3600, gpus=1),
    }


class RunStorage(Section):
    """The run's volume (PVC): the base-model cache, checkpoints, merged models and adapters. Model
    weights stay here; KFP artifacts carry data, metrics, reports and adapters only."""

    claim: K8sName = ""
    """An existing PVC to use (its model cache then survives runs; each run writes under its own
    run id). Empty = a new PVC per run, created first and deleted after the last step."""
    size: Quantity = "500Gi"
    """Size of the per-run PVC."""
    storage_class: str = ""
    """StorageClass of the per-run PVC (empty = the cluster's default)."""
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = "ReadWriteMany"
    """ReadWriteMany lets steps on different nodes (CPU and GPU pools, training nodes) mount it;
    ReadWriteOnce works only when every pod lands on one node."""
    mount_path: Annotated[str, Field(pattern=r"^/[^\s]*$")] = "/mnt/reset"
    """Where the volume is mounted in the steps' pods and the training job's pods."""
    keep: bool = False
    """Keep the per-run PVC after the run (for debugging); it is deleted otherwise."""


class TrainingEngine(Section):
    """Where the fine-tuning steps train: in the step's own pod, or handed to Kubeflow's training
    engine as torchrun over the pipeline's image (the step waits for it and fails with its reason)."""

    engine: Literal["pod", "pytorchjob", "trainjob"] = "pod"
    """pod: in the step's pod. pytorchjob: a Training Operator PyTorchJob (kubeflow.org/v1;
    Kubeflow 1.9 / 1.10). trainjob: a Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1,
    Trainer v2.1+)."""
    nodes: PositiveInt = 1
    """Training pods (torchrun nodes)."""
    procs_per_node: PositiveInt = 1
    """torchrun processes per node (one per GPU)."""
    runtime: K8sName = "torch-distributed"
    """TrainJob: the ClusterTrainingRuntime it references."""
    timeout_s: PositiveInt = 48 * 3600
    """The launching step waits this long, then deletes the job and fails."""
    service_account: K8sName = ""
    """Service account of the training pods (empty = the namespace's default)."""


class ClusterConfig(Section):
    """Compile-time settings for a Kubeflow cluster (kfp-kubernetes); ignored by local runs.
    Secrets are referenced by Kubernetes Secret name only: their values never enter the pipeline."""

    image: str = ""
    """The one image every component (and every training pod) runs; empty = RESET_IMAGE or the
    default in components/image.py. Build it with images/ (CPU or CUDA)."""
    shards: PositiveInt = 1
    """Split generate, judge and evaluate's answering into this many tasks (pods) that run in
    parallel over contiguous pieces of their prompts (dsl.ParallelFor), gathered in order
    (dsl.Collected): with the vllm backend the result is the unsharded run's (per-request seeds).
    The one cluster setting a local run uses too: it shapes the DAG."""
    s3_secret: K8sName = "reset-s3"
    """Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL. Required (the pod
    does not start without it) on the steps in s3_steps; optional on the others."""
    s3_steps: list[StepName] = Field(default_factory=s3_steps)
    """Steps that read or write S3 (data, the base model, the exported model)."""
    mlflow_secret: K8sName = "reset-mlflow"
    """Secret with MLFLOW_TRACKING_USERNAME / _PASSWORD or _TOKEN, mounted on every step."""
    mlflow_secret_required: bool = False
    """Make mlflow_secret required (for a tracking server with authentication)."""
    llm_secret: K8sName = "reset-llm"
    """Secret with the LLM judge's API key(s), on the judge, evaluate and promote steps: required
    when the compiled config uses an LLM judge, optional otherwise."""
    llm_secret_keys: list[str] = Field(default_factory=lambda: ["OPENAI_API_KEY"])
    """Keys of llm_secret mounted as env vars of the same name."""
    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource name of the GPUs (also the key of the toleration added to GPU pods)."""
    gpu_node_label: str = "nvidia.com/gpu.product"
    """Node label that resources.<step>.gpu_type selects on."""
    resources: dict[StepName, StepResources] = Field(default_factory=_default_resources)
    """Per-step pod resources; a step not listed gets StepResources' defaults."""
    storage: RunStorage = Field(default_factory=RunStorage)
    """The run's volume (PVC)."""
    training: TrainingEngine = Field(default_factory=TrainingEngine)
    """Where the fine-tuning steps train."""
    cache_steps: list[StepName] = Field(default_factory=cacheable_steps)
    """Steps KFP may serve from its cache (deterministic given their inputs: seeded, no side
    effect but their MLflow run). The MLflow parent run is found by the KFP run id, so it is no
    input. mix reads its sources by path: leave it out when a path's content changes in place."""
    retries: NonNegativeInt = 0
    """KFP retry policy per task (0 = none); a retried step's newest MLflow run counts."""

    @field_validator("resources", mode="before")
    @classmethod
    def _merge_defaults(cls, value: Any) -> Any:
        """A config lists only the steps (and keys) it changes; the rest keep their defaults."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {k: v.model_dump() for k, v in _default_resources().items()}
        for step, res in value.items():
            if isinstance(res, StepResources):
                res = res.model_dump(exclude_unset=True)
            merged[step] = {**merged.get(step, {}), **res} if isinstance(res, dict) else res
        return merged

    def step_resources(self, step: str) -> StepResources:
        return self.resources.get(step, StepResources())  # type: ignore[call-overload]
