"""MLflow tracking: one parent run per pipeline run, one child run per step.

The parent run is created by the first step and its id handed to every later step (steps run in
separate processes or pods). Default store: a local SQLite file (runs/mlflow.db) with artifacts in
runs/mlartifacts; any tracking URI by config. Credentials for a remote server come from the
environment (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN), never from parameters, and nothing
here logs the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from reset import progress
from reset.config import TrackingConfig

STEP_TAG = "reset.step"
JOB_TAG = "reset.kfp_job_id"
# The KFP run id, in every step's environment: on a cluster from the pod's `pipeline/runid` label
# (kfp-kubernetes field path), locally set by the CLI. A step finds its parent run by it, so the
# parent run id is no input and deterministic steps stay cacheable.
JOB_ENV = "RESET_KFP_RUN_ID"


def job_id(default: str = "") -> str:
    """This pipeline run's KFP run id (JOB_ENV), else `default`."""
    return os.environ.get(JOB_ENV, "").strip() or default


def local_tracking_uri(root: str | os.PathLike[str] = "runs") -> str:
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_uri(cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or local_tracking_uri()


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def experiment_id(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store and return the experiment's id (created if needed)."""
    import mlflow

    uri = resolve_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # created concurrently by another step
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            text = json.dumps(v) if not isinstance(v, str) else v
            out[key] = text[:6000]
    return out


def start_parent(cfg: TrackingConfig, config: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str:
    """Create the pipeline's parent run (left RUNNING), log the whole config as params."""
    import mlflow

    exp = experiment_id(cfg)
    client = mlflow.MlflowClient()
    all_tags = {"reset.role": "pipeline", **(tags or {})}
    if cfg.run_name:
        all_tags["mlflow.runName"] = cfg.run_name
    run = client.create_run(exp, tags=all_tags, run_name=cfg.run_name or None)
    params = flatten(config)
    items = list(params.items())
    from mlflow.entities import Param

    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    client.log_text(run.info.run_id, json.dumps(config, indent=2, sort_keys=True), "config.json")
    return run.info.run_id


@contextlib.contextmanager
def step_run(cfg: TrackingConfig, parent_run_id: str, step: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A child run of the pipeline's parent run for one step; marked FAILED if the step raises."""
    import mlflow

    t0 = time.monotonic()
    progress.emit("start", step=step)
    try:
        exp = experiment_id(cfg)
        if not parent_run_id and job_id():
            parent_run_id = find_parent(cfg, job_id()) or ""
            if not parent_run_id:
                raise RuntimeError(f"no MLflow parent run tagged {JOB_TAG}={job_id()} in experiment "
                                   f"{cfg.experiment!r} at {resolve_uri(cfg)}: did start-run log elsewhere?")
        run = mlflow.start_run(experiment_id=exp, run_name=step, parent_run_id=parent_run_id or None,
                               tags={STEP_TAG: step})
    except BaseException as exc:
        progress.emit("fail", step=step, seconds=time.monotonic() - t0, error=_describe(exc))
        raise
    try:
        if params:
            mlflow.log_params(flatten(params))
        yield run
    except BaseException as exc:
        progress.emit("fail", step=step, seconds=time.monotonic() - t0, error=_describe(exc))
        mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run("FINISHED")
    progress.emit("end", step=step, seconds=time.monotonic() - t0)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def find_parent(cfg: TrackingConfig, job_id: str) -> str | None:
    """The parent run created for pipeline job `job_id`, if any."""
    import mlflow

    exp = experiment_id(cfg)
    runs = mlflow.MlflowClient().search_runs([exp], f"tags.`{JOB_TAG}` = '{job_id}'", max_results=1)
    return runs[0].info.run_id if runs else None


def finish_parent(cfg: TrackingConfig, parent_run_id: str, expected_last_step: str = "register") -> str:
    """Close the parent run: FINISHED when every child finished and the last step ran, else FAILED."""
    import mlflow

    experiment_id(cfg)
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["attributes.start_time DESC"],
    )
    steps: dict[str | None, str] = {}
    for r in children:  # newest first: a step retried by KFP counts by its last attempt
        steps.setdefault(r.data.tags.get(STEP_TAG), r.info.status)
    ok = expected_last_step in steps and all(s == "FINISHED" for s in steps.values())
    status = "FINISHED" if ok else "FAILED"
    client.set_terminated(parent_run_id, status)
    return status
