"""The one code path for a cluster's Kubernetes settings (kfp-kubernetes), applied to every task of
every pipeline (ReSet, experiment, promotion) by its display name: the step table
(reset/config/steps.py) says which step's settings a task takes and whether it mounts the run's
volume; `cluster` (reset/config/cluster.py) holds the image, Secrets, resources and volume.
kfp.local ignores all of it (tests read it back from the compiled YAML).
"""

from __future__ import annotations

import json

from kfp import dsl, kubernetes

from reset import handoff, tracking
from reset.config import STEPS, ClusterConfig, PipelineConfig
from reset.config.steps import settings_of
from reset.data import chunks

# The pod label KFP puts on every task pod: the run id, which the steps find their MLflow parent by.
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
MLFLOW_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def uses_llm_judges(cfg: PipelineConfig) -> bool:
    """The config judges with an LLM: the judging steps' LLM Secret is then required."""
    return any(j.startswith("llm-") for j in cfg.judge.judges)


def run_volume(cluster: ClusterConfig | None):
    """(the CreatePVC task or None, the volume's name or None): the run's PVC, created first unless
    cluster.storage.claim names an existing one."""
    if cluster is None:
        return None, None
    if cluster.storage.claim:
        return None, cluster.storage.claim
    pvc = kubernetes.CreatePVC(
        pvc_name_suffix="-reset-run", access_modes=[cluster.storage.access_mode], size=cluster.storage.size,
        **({"storage_class_name": cluster.storage.storage_class} if cluster.storage.storage_class else {}),
    ).set_display_name("create-volume").set_caching_options(False)  # a cached one names a deleted PVC
    return pvc, pvc.outputs["name"]


def delete_volume(cluster: ClusterConfig | None, pvc, after) -> None:
    """Delete the run's PVC after `after` (a failed run keeps it, for a look inside)."""
    if pvc is not None and not cluster.storage.keep:
        kubernetes.DeletePVC(pvc_name=pvc.outputs["name"]).after(after).set_display_name(
            "delete-volume").set_caching_options(False)


def hands_off(cluster: ClusterConfig | None) -> bool:
    """Fine-tuning goes to Kubeflow's training engine (the step launches and watches a job)."""
    return cluster is not None and cluster.training.engine != "pod"


def set_caching(tasks: dict[str, dsl.PipelineTask], cluster: ClusterConfig | None) -> None:
    """On a cluster: the steps named in cluster.cache_steps (deterministic; their inputs hold no run
    id: the parent run is found by the run's id). Locally every task but the run's bookkeeping: the
    CLI gives each run folder its own kfp.local cache, so only `run --resume` of it reuses a task."""
    for name, task in tasks.items():
        if cluster is not None:
            task.set_caching_options(settings_of(name) in cluster.cache_steps)
        else:
            task.set_caching_options(name not in ("start-run", "finish-run", "report"))


def apply(cluster: ClusterConfig, tasks: dict[str, dsl.PipelineTask], volume=None, *, llm_judges: bool = False,
          image: str = "") -> None:
    """Kubernetes settings per task; `tasks` maps display names to tasks. `volume`: the run's PVC
    (mounted on the steps that hold models); `llm_judges`: the compiled config uses an LLM judge, so
    its Secret is required on the steps that judge."""
    from components.image import BASE_IMAGE

    image = image or cluster.image or BASE_IMAGE
    for task_name, task in tasks.items():
        name = settings_of(task_name)
        step = STEPS[name]
        task.set_container_image(image)
        kubernetes.use_field_path_as_env(task, env_name=tracking.JOB_ENV, field_path=RUN_ID_FIELD)
        if cluster.s3_secret:
            _secret(task, cluster.s3_secret, S3_KEYS, required=name in cluster.s3_steps)
        if cluster.mlflow_secret:
            _secret(task, cluster.mlflow_secret, MLFLOW_KEYS, required=cluster.mlflow_secret_required)
        if cluster.llm_secret and cluster.llm_secret_keys and "judge" in step.sections:
            _secret(task, cluster.llm_secret, cluster.llm_secret_keys, required=llm_judges)
        if volume is not None and step.volume:
            kubernetes.mount_pvc(task, pvc_name=volume, mount_path=cluster.storage.mount_path)
            task.set_env_variable("RESET_CACHE_DIR", f"{cluster.storage.mount_path}/cache")
            task.set_env_variable("HF_HOME", f"{cluster.storage.mount_path}/cache/hf")
            # the chunks of a step's results, for a retried attempt to continue from (reset.data.chunks)
            task.set_env_variable(chunks.RESUME_ENV, f"{cluster.storage.mount_path}/resume")
        res = cluster.step_resources(name)
        handed_off = step.call == "finetune" and hands_off(cluster)
        if handed_off:  # the pod only launches and watches the training job; the job gets `res`
            stage = task_name.removeprefix("finetune-")
            task.set_env_variable(handoff.ENV, json.dumps(handoff.settings(cluster, stage, image), sort_keys=True))
            task.set_cpu_request("500m").set_memory_request("2Gi").set_memory_limit("4Gi")
            kubernetes.set_timeout(task, cluster.training.timeout_s + 3600)
        else:
            _resources(task, cluster, res)
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path="/scratch",
                                   size_limit=res.ephemeral_storage if not handed_off else "1Gi")
        task.set_env_variable("TMPDIR", "/scratch")
        if cluster.retries and name not in ("start-run", "finish-run"):
            task.set_retry(num_retries=cluster.retries, backoff_duration="30s")


def _resources(task: dsl.PipelineTask, cluster: ClusterConfig, res) -> None:
    task.set_cpu_request(res.cpu).set_memory_request(res.memory)
    task.set_memory_limit(res.memory_limit or res.memory)
    if res.cpu_limit:
        task.set_cpu_limit(res.cpu_limit)
    if res.gpus:
        task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(res.gpus)
        kubernetes.add_toleration(task, key=cluster.gpu_resource, operator="Exists", effect="NoSchedule")
        if res.gpu_type:
            kubernetes.add_node_selector(task, label_key=cluster.gpu_node_label, label_value=res.gpu_type)
    if res.timeout_s:
        kubernetes.set_timeout(task, res.timeout_s)


def _secret(task: dsl.PipelineTask, name: str, keys, required: bool) -> None:
    kubernetes.use_secret_as_env(task, secret_name=name, optional=not required,
                                 secret_key_to_env={k: k for k in keys})
