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
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from reset import procs, progress
from reset.config import TrackingConfig
from reset.data.storage import is_local_store
from reset.errors import duplicate_row

STEP_TAG = "reset.step"
# MLflow's UI opens an experiment of this kind in its model-training view (not the GenAI traces page).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
JOB_TAG = "reset.kfp_job_id"
# The KFP run id, in every step's environment: on a cluster from the pod's `pipeline/runid` label
# (kfp-kubernetes field path), locally set by the CLI. A step finds its parent run by it, so the
# parent run id is no input and deterministic steps stay cacheable.
JOB_ENV = "RESET_KFP_RUN_ID"


# A local run's parent and step runs carry the identity of the process that runs them (host, pid,
# start time, boot id; reset.procs): a RUNNING run whose process is gone is marked KILLED by
# `mark_dead_runs` (the next local run, or `python -m pipelines runs cleanup`).
LOCAL_TAG = "reset.local."
ATTEMPTS_TAG = "reset.attempts"
# How long MLflow's HTTP client keeps retrying a tracking server that does not answer, unless the
# user set these: about 15 s (MLflow's own default is about 4 minutes), so a step whose server
# died fails with the reason instead of hanging.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def job_id(default: str = "") -> str:
    """This pipeline run's KFP run id (JOB_ENV), else `default`."""
    return os.environ.get(JOB_ENV, "").strip() or default


def local_tracking_uri(root: str | os.PathLike[str] = "runs") -> str:
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def prepare_store(uri: str) -> None:
    """Create a local SQLite store's tables once, under a lock beside it: MLflow creates them on
    first use, and several local runs (or their first tasks) starting on a new store at the same
    moment race ("table ... already exists")."""
    if not uri.startswith("sqlite:///"):
        return
    import fcntl

    import mlflow

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    quiet = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic.runtime.migration")]
    levels = [q.level for q in quiet]
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for q in quiet:  # "Creating initial MLflow database tables..." is not news for the console
                q.setLevel(logging.WARNING)
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            for q, level in zip(quiet, levels, strict=True):
                q.setLevel(level)
            fcntl.flock(lock, fcntl.LOCK_UN)


def resolve_uri(cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or local_tracking_uri()


def cluster_store_problem(uri: str) -> str:
    """Why an MLflow store cannot serve a cluster run ("" if it can): every step runs in its own pod,
    so they must share one tracking server."""
    if is_local_store(uri):
        return (f"tracking.tracking_uri is {uri.strip() or 'empty (a local SQLite file)'}: on a cluster each step "
                "runs in its own pod, so set it to a shared MLflow server (http://... or https://...)")
    return ""


def experiment_id(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store and return the experiment's id (created if needed)."""
    import mlflow

    uri = resolve_uri(cfg)
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        if "mlflow.experimentKind" not in exp.tags:  # made before this tag existed, or by hand
            for k, v in EXPERIMENT_TAGS.items():
                try:
                    client.set_experiment_tag(exp.experiment_id, k, v)
                except Exception as e:  # two steps tagging it at once: the other one's insert won
                    if not duplicate_row(e):
                        raise
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
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


def local_tags(ident: Mapping[str, str] | None) -> dict[str, str]:
    """The tags that name the local process running a run (none outside a local run)."""
    return {f"{LOCAL_TAG}{k}": str(v) for k, v in (ident or {}).items()}


def start_parent(cfg: TrackingConfig, config: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str:
    """Create the pipeline's parent run (left RUNNING), log the whole config as params. When a
    parent tagged with the same KFP job id exists (a resumed local run, a retried start task) it is
    reopened instead: RUNNING again, its attempt counted, the config of this attempt logged as
    `config-attempt-<n>.json` (params are write-once in MLflow: keys that changed stay as first
    logged; the artifact holds the new values)."""
    import mlflow

    exp = experiment_id(cfg)
    client = mlflow.MlflowClient()
    driver = local_tags(procs.driver())
    job = (tags or {}).get(JOB_TAG, "")
    existing = find_parent(cfg, job) if job else None
    if existing:
        run = client.get_run(existing)
        attempt = int(run.data.tags.get(ATTEMPTS_TAG, "1")) + 1
        client.update_run(existing, "RUNNING")
        for key, value in {ATTEMPTS_TAG: str(attempt), **driver}.items():
            client.set_tag(existing, key, value)
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in flatten(config).items() if k not in run.data.params]
        for i in range(0, len(new), 100):
            client.log_batch(existing, params=new[i : i + 100])
        client.log_text(existing, json.dumps(config, indent=2, sort_keys=True), f"config-attempt-{attempt}.json")
        return existing
    all_tags = {"reset.role": "pipeline", **(tags or {}), **driver}
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
def step_run(cfg: TrackingConfig, step: str, params: Mapping[str, Any] | None = None, *,
             parent_run_id: str = "") -> Iterator[Any]:
    """A child run of the pipeline's parent run for one step (found by the KFP run id in JOB_ENV,
    or `parent_run_id`); marked FAILED (KILLED when stopped) if the step raises."""
    import mlflow

    t0 = time.monotonic()
    startup = progress.process_age()
    progress.take_phases()
    progress.emit("start", step=step)
    procs.watch_driver()  # a local run: stop (KILLED) when the driver dies
    uri = resolve_uri(cfg)
    try:
        exp = experiment_id(cfg)
        if not parent_run_id and job_id():
            parent_run_id = find_parent(cfg, job_id()) or ""
            if not parent_run_id:
                raise RuntimeError(f"no MLflow parent run tagged {JOB_TAG}={job_id()} in experiment "
                                   f"{cfg.experiment!r} at {uri}: did start-run log elsewhere?")
        run = mlflow.start_run(experiment_id=exp, run_name=step, parent_run_id=parent_run_id or None,
                               tags={STEP_TAG: step, **local_tags(procs.identity() if procs.driver() else None)})
    except BaseException as exc:
        progress.emit("fail", step=step, seconds=time.monotonic() - t0, error=_describe(exc, uri))
        raise
    try:
        if params:
            mlflow.log_params(flatten(params))
        yield run
    except BaseException as exc:
        # Close the run first: the event below may fail (a driver that is gone took the pipe).
        # Stopped, not failed: interrupted, or its local run's driver is gone (the task's output pipe
        # went with it, so a print can fail before the watchdog's SIGINT arrives).
        ident = procs.driver()
        orphan = ident is not None and procs.alive(ident) is False
        killed = isinstance(exc, KeyboardInterrupt | SystemExit) or orphan
        with contextlib.suppress(Exception):  # the server may be what failed; keep the step's error
            mlflow.end_run("KILLED" if killed else "FAILED")
        progress.emit("fail", step=step, seconds=time.monotonic() - t0,
                      error="stopped (interrupted)" if killed else _describe(exc, uri))
        if orphan:  # its local driver is gone: nobody waits for this task, and Python's own shutdown of a
            os._exit(130)  # process that loaded torch took seconds (3.7 s measured); its run is closed
        raise
    body = time.monotonic() - t0
    with contextlib.suppress(Exception):  # where the step's time went (bench/profile_run.py): best effort
        mlflow.log_metrics({"step.startup_s": startup, "step.body_s": body,
                            **{f"phase.{k}_s": v for k, v in progress.take_phases().items()}})
    mlflow.end_run("FINISHED")
    progress.emit("end", step=step, seconds=body)
    procs.quick_exit_after_task()  # a task process: skip Python's teardown once kfp has its outputs


def _describe(exc: BaseException, uri: str = "") -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if type(exc).__name__ == "MlflowException" and "API request to" in first:
        # "API request to http://.../api/2.0/mlflow/runs/log-metric failed with exception
        # HTTPConnectionPool(...): Max retries exceeded ... (Caused by NewConnectionError(...))"
        cause = first.rsplit("Caused by ", 1)[-1].rstrip(")") if "Caused by " in first else first[-200:]
        return f"the MLflow tracking server at {uri} did not answer: {cause[:200]}"
    return f"{type(exc).__name__}: {first}".rstrip(": ")


def find_parent(cfg: TrackingConfig, job_id: str) -> str | None:
    """The parent run created for pipeline job `job_id`, if any."""
    import mlflow

    exp = experiment_id(cfg)
    runs = mlflow.MlflowClient().search_runs([exp], f"tags.`{JOB_TAG}` = '{job_id}'", max_results=1)
    return runs[0].info.run_id if runs else None


# What the experiment pipeline's last task (its report across seeds, reset.steps.experiment_report)
# logs on the parent run; that pipeline has no register step.
EXPERIMENT_REPORT = "experiment.md"


def finish_parent(cfg: TrackingConfig, parent_run_id: str, expected_last_step: str = "register") -> str:
    """Close the parent run: FINISHED when every child finished and the pipeline reached its end (its
    last step ran, or, for the experiment, its report is on the parent run), else FAILED."""
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
    ended = expected_last_step in steps or any(
        a.path == EXPERIMENT_REPORT for a in client.list_artifacts(parent_run_id))
    ok = ended and all(s == "FINISHED" for s in steps.values())
    status = "FINISHED" if ok else "FAILED"
    client.set_terminated(parent_run_id, status)
    return status


def _running(client, experiment_ids: list[str]) -> list[Any]:
    """Every RUNNING run of these experiments."""
    out, token = [], None
    while True:
        page = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _descendants(runs: list[Any], roots: set[str]) -> list[Any]:
    """The runs among `runs` below any of `roots` (children, their nested runs, ...)."""
    below: list[Any] = []
    seen = set(roots)
    frontier = set(roots)
    while frontier:
        nxt = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in frontier and r.info.run_id not in seen]
        below.extend(nxt)
        frontier = {r.info.run_id for r in nxt}
        seen |= frontier
    return below


def kill_job_runs(cfg: TrackingConfig, job: str, status: str = "KILLED") -> list[str]:
    """Mark the parent run of pipeline job `job` and every run below it still RUNNING (its steps,
    their nested runs) as `status` (a local run stopped by Ctrl-C). Returns the run ids marked."""
    import mlflow

    parent = find_parent(cfg, job)
    if parent is None:
        return []
    client = mlflow.MlflowClient()
    run = client.get_run(parent)
    running = _running(client, [run.info.experiment_id])
    marked = []
    for r in [*reversed(_descendants(running, {parent})), run]:
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, status)
            marked.append(r.info.run_id)
    return marked


def mark_dead_runs(uri: str, experiments: list[str] | None = None) -> list[dict[str, str]]:
    """Mark KILLED every RUNNING run of the store at `uri` whose local process is gone: a parent
    or step run whose reset.local.* tags name this host and a process that no longer runs, and
    the runs nested below those (which carry no tags of their own). Runs of live processes, of
    other hosts and of cluster runs are left alone. `experiments`: names to look in (default:
    every active experiment). Returns what was marked (run id, name, experiment, pid)."""
    import mlflow

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return []  # no store yet: nothing ran there
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exps = client.search_experiments()
    if experiments is not None:
        exps = [e for e in exps if e.name in experiments]
    if not exps:
        return []
    names = {e.experiment_id: e.name for e in exps}
    running = _running(client, list(names))
    host = procs.identity()["host"]
    dead: list[tuple[Any, str]] = []
    ended_parents: set[str] = set()
    for r in running:
        ident = {k[len(LOCAL_TAG):]: v for k, v in r.data.tags.items() if k.startswith(LOCAL_TAG)}
        if ident and ident.get("host") == host and procs.alive(ident) is False:
            dead.append((r, ident.get("pid", "")))
    # A nested run (no tags of its own) whose local step run has already ended is orphaned too.
    by_id = {r.info.run_id: r for r in running}
    for r in running:
        parent = r.data.tags.get("mlflow.parentRunId", "")
        if parent and parent not in by_id and not any(k.startswith(LOCAL_TAG) for k in r.data.tags):
            try:
                p = client.get_run(parent)
            except Exception:  # noqa: BLE001 - a deleted parent: leave it
                continue
            if p.data.tags.get(f"{LOCAL_TAG}host") == host:
                ended_parents.add(parent)
    roots = {r.info.run_id for r, _ in dead} | ended_parents
    nested = [(r, "") for r in _descendants(running, roots) if not any(k.startswith(LOCAL_TAG) for k in r.data.tags)]
    marked: list[dict[str, str]] = []
    for r, pid in [*nested, *dead]:
        if r.info.run_id in {m["run_id"] for m in marked}:
            continue
        client.set_terminated(r.info.run_id, "KILLED")
        marked.append({"run_id": r.info.run_id, "name": r.info.run_name or "",
                       "experiment": names.get(r.info.experiment_id, ""), "pid": pid})
    return marked


# ------------------------------------------------------------------------ what steps log, and how
def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries, for mlflow.log_metrics; counts stay integers (MLflow shows 240, not 240.0)."""
    return {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits, _ - . space / : only; source names are free text."""
    import re

    return re.sub(r"[^\w\-. /:]", "_", name)


def dataset(uri: str, name: str, digest: str):
    """An MLflow dataset that records where data came from and its content digest (no copy)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.exceptions import MlflowException

    if uri.startswith("builtin:"):
        source = CodeDatasetSource({"reset.builtin": uri})
    elif uri.startswith("hf://datasets/"):
        source = HTTPDatasetSource(f"https://huggingface.co/datasets/{uri.removeprefix('hf://datasets/')}")
    else:
        try:
            source = resolve_dataset_source(uri if "://" in uri else os.path.abspath(uri))
        except MlflowException:  # a scheme MLflow has no source type for
            source = HTTPDatasetSource(uri)
    return MetaDataset(source, name=name, digest=(digest or "")[:16] or None)


def log_input(data, **kwargs) -> None:
    """mlflow.log_input, once more when another run inserted the same dataset (same experiment,
    name and digest) between MLflow's lookup and its insert: two runs of one pipeline at once on
    one store race there, and the second try finds the row and links to it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            mlflow.log_input(data, **kwargs)
            return
        except MlflowException as e:
            if not duplicate_row(e) or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def log_on_parent(parent_run_id: str, *, metrics: Mapping[str, float] | None = None,
                  tags: Mapping[str, str] | None = None, texts: Mapping[str, str] | None = None,
                  images: Mapping[str, bytes] | None = None) -> None:
    """Metrics (batched), tags, text artifacts and PNG images on the pipeline's parent run."""

    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    items = list((metrics or {}).items())
    now = int(time.time() * 1000)
    for i in range(0, len(items), 500):
        client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in items[i : i + 500]])
    for k, v in (tags or {}).items():
        client.set_tag(parent_run_id, k, v)
    for name, text in (texts or {}).items():
        client.log_text(parent_run_id, text, name)
    for name, png in (images or {}).items():
        client.log_image(parent_run_id, png_image(png), name)


def tag_with_parent(run, tags: Mapping[str, str]) -> None:
    """Tags on a step's run and on the pipeline's parent run."""
    import mlflow

    mlflow.set_tags(dict(tags))
    parent = run.data.tags.get("mlflow.parentRunId", "")
    if parent:
        client = mlflow.MlflowClient()
        for k, v in tags.items():
            client.set_tag(parent, k, v)


def png_image(data: bytes):
    """PNG bytes as a PIL image (mlflow.log_image takes images, not bytes)."""
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def run_title(pipeline: str, base_model: str, train_size: int, when: float | None = None) -> str:
    """A parent-run name that says what ran: 'ReSet · smollm2-135m-instruct · 240 train · 11-24 19:40'."""
    base = base_model.rstrip("/").split("/")[-1].removeprefix("builtin:")
    size = f"{train_size} train" if train_size else "all data"
    return f"{pipeline} · {base} · {size} · {time.strftime('%m-%d %H:%M', time.localtime(when))}"
