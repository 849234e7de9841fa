"""Hand a fine-tuning step to Kubeflow's training engine: a PyTorchJob (Training Operator,
Kubeflow 1.9 / 1.10) or a TrainJob (Kubeflow Trainer v2.1+), running torchrun over the pipeline's
image with the library's trainer as the entry point. The launching step waits for the job with a
timeout, prints its status changes, and fails with the job's own reason.

Kubernetes is reached through the official `kubernetes` client (in-cluster service account, or a
kubeconfig outside a cluster). Nothing here imports kfp.
"""

from reset.launch.jobs import (
    JOB_KINDS,
    JobFailed,
    JobResult,
    JobTimeout,
    LaunchError,
    api_client,
    current_namespace,
    run_job,
)
from reset.launch.manifests import TrainingLaunch, job_manifest, pytorchjob_manifest, trainjob_manifest

__all__ = [
    "JOB_KINDS",
    "JobFailed",
    "JobResult",
    "JobTimeout",
    "LaunchError",
    "TrainingLaunch",
    "api_client",
    "current_namespace",
    "job_manifest",
    "pytorchjob_manifest",
    "run_job",
    "trainjob_manifest",
]
