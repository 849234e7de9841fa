"""A fine-tuning step handed to Kubeflow's training engine (PyTorchJob or TrainJob).

The launching step (a KFP task, or anyone calling `finetune`) copies the step's inputs onto the
run's volume, creates the job (torchrun over the pipeline's image running
`python -m reset.models.finetune --config ... --data ... --out ...` on every node), waits for it
with the configured timeout while printing its status, fails with the job's own reason, and
finally copies the trained output (a LoRA adapter and its base-model reference) from the volume
into the step's output and logs the metrics and the loss curve to the step's MLflow run.

The engine settings arrive in the env var RESET_TRAINING (JSON, written at compile time from
`cluster.training`, `cluster.resources.finetune-*` and the Secret names; no secret values), so the
step's inputs stay the same whether it trains in its pod or hands off.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from reset import config as configs
from reset import tracking
from reset.config.cluster import StepResources, TrainingEngine
from reset.config.steps import settings_of
from reset.launch import TrainingLaunch, api_client, current_namespace, job_manifest, run_job
from reset.launch.manifests import job_name

ENV = "RESET_TRAINING"
METRICS_FILE = "train_metrics.json"


def engine() -> dict[str, Any] | None:
    """The hand-off settings of this step (None: train in this pod)."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    spec = json.loads(text)
    return spec if spec.get("engine", "pod") != "pod" else None


def settings(cluster: configs.ClusterConfig, stage: str, image: str) -> dict[str, Any]:
    """What `engine()` reads back, from the cluster section (compile time); an experiment arm's
    stage (if-only, reset-s, ...) takes the settings of the step it runs (reset/config/steps.py)."""
    step = settings_of(f"finetune-{stage}")
    secrets: dict[str, list[Any]] = {}
    if cluster.s3_secret:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            secrets[k] = [cluster.s3_secret, k, step not in cluster.s3_steps]
    return {
        **cluster.training.model_dump(),
        "image": image,
        "claim": cluster.storage.claim,
        "mount_path": cluster.storage.mount_path,
        "resources": cluster.step_resources(step).model_dump(),
        "gpu_resource": cluster.gpu_resource,
        "gpu_node_label": cluster.gpu_node_label,
        "secrets": secrets,
    }


def _launch(spec: Mapping[str, Any], stage: str, run_dir: Path, args: list[str], claim: str) -> TrainingLaunch:
    run_id = tracking.job_id("manual")
    mount = spec["mount_path"]
    return TrainingLaunch(
        name=job_name("reset", run_id[:18], stage),
        namespace=current_namespace(),
        image=spec["image"],
        trainer_args=args,
        claim=claim,
        mount_path=mount,
        resources=StepResources(**spec["resources"]),
        gpu_resource=spec["gpu_resource"],
        gpu_node_label=spec["gpu_node_label"],
        env={"RESET_CACHE_DIR": f"{mount}/cache", "HF_HOME": f"{mount}/cache/hf", "HF_HUB_OFFLINE": "1",
             "TRANSFORMERS_OFFLINE": "1", tracking.JOB_ENV: run_id},
        secret_env={k: (v[0], v[1], bool(v[2])) for k, v in spec.get("secrets", {}).items()},
        labels={"app.kubernetes.io/part-of": "reset", "reset.kfp/run-id": job_name(run_id)[:63],
                "reset.kfp/step": f"finetune-{stage}"},
    )


def finetune(model: str | None, train_path: str, cfg: configs.PipelineConfig, *, stage: str, out_dir: str,
             section: str = "train", kinds: Sequence[str] = (), run_volume: str = "", api=None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train on the cluster's engine; same inputs and result as `steps.finetune`."""
    spec = engine()
    if spec is None:
        raise RuntimeError(f"{ENV} names no training engine: train in the pod with steps.finetune")
    tcfg, mcfg = getattr(cfg, section), cfg.model
    claim = run_volume or spec.get("claim", "")
    if not claim:
        raise RuntimeError("a training job needs the run's volume: set cluster.storage (a PVC) when compiling")
    run_dir = Path(spec["mount_path"]) / "runs" / tracking.job_id("manual") / f"finetune-{stage}"
    if run_dir.exists():  # a retried step starts its job afresh
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    if kinds:  # the arm's part of the mixture (the experiment's IF-only, CD-only, ...)
        rows = [x for x in Path(train_path).read_text(encoding="utf-8").splitlines()
                if x.strip() and json.loads(x).get("kind") in kinds]
        (run_dir / "train.jsonl").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    else:
        shutil.copyfile(train_path, run_dir / "train.jsonl")
    cfg_file = run_dir / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": mcfg.model_dump(), section: tcfg.model_dump()}, sort_keys=False))
    out = run_dir / "out"
    args = ["--config", str(cfg_file), "--data", str(run_dir / "train.jsonl"), "--out", str(out),
            "--section", section]
    if model:  # the MTL checkpoint (an adapter and its base reference) from the previous step
        shutil.copytree(model, run_dir / "model")
        args += ["--model", str(run_dir / "model")]
    launch = _launch(spec, stage, run_dir, args, claim)
    eng = TrainingEngine(**{k: spec[k] for k in TrainingEngine.model_fields if k in spec})
    manifest = job_manifest(launch, eng)
    with tracking.step_run(cfg.tracking, f"finetune-{stage}",
                           {"stage": stage, "engine": eng.model_dump(), "train": tcfg.model_dump(),
                            "model": mcfg.model_dump()}):
        import mlflow

        mlflow.set_tags({"training.kind": manifest["kind"], "training.job": launch.name,
                         "training.namespace": launch.namespace})
        result = run_job(api or api_client(), manifest, eng.timeout_s, log=log)
        path = out / METRICS_FILE
        if not path.exists():
            raise RuntimeError(f"{manifest['kind']} {launch.name} succeeded but wrote no {path}")
        metrics = json.loads(path.read_text())
        for step, loss in enumerate(metrics.get("loss_history", [])):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                            if isinstance(v, int | float) and not isinstance(v, bool)})
        mlflow.log_metric("job_seconds", result.seconds)
        shutil.copytree(out, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))
        log(f"[train] {launch.name}: {metrics.get('steps')} steps, final loss {metrics.get('final_loss')}")
    return metrics
