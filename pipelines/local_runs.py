"""Local runs that stop cleanly and resume: the run folder, Ctrl-C, `--resume`, `runs cleanup`.

    python -m pipelines run --config configs/tiny.yaml            # run folder runs/run-<date>-<time>
    python -m pipelines run --resume run-20250101-120000          # reuse what finished, run the rest
    python -m pipelines runs cleanup [--output-dir runs | --tracking-uri URI]

A run folder holds `job.json` (the KFP job id the MLflow parent run is tagged with, the effective
config, who started it), `logs/`, `cache/` (kfp.local's task cache: an entry per task that
finished, written after its outputs) and `checkpoints/` (the fine-tuning steps' resumable
checkpoints, while they run). `--resume` runs the same pipeline again in that folder with the same
job id: a task whose inputs are unchanged and that finished is not run again (its outputs are
reused), the others run, a fine-tuning step continues from its last checkpoint, and the same
MLflow parent run is reopened.

Ctrl-C (SIGINT) or SIGTERM: the running task is stopped (SIGINT, then SIGKILL after a grace
period), the MLflow parent and running step runs are marked KILLED, one line says how to resume,
and the exit code is 130 (143 for SIGTERM). A driver killed outright (SIGKILL) cannot do this:
its tasks notice within a second and stop (their step runs marked KILLED), and the parent run,
which names the driver's pid, is marked KILLED by the next run or `runs cleanup`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.tasks import display
from reset import procs
from reset.config import SECTIONS, ConfigError, PipelineConfig, load_config, to_dict

JOB_FILE = "job.json"
CONFIG_FILE = "config.json"
GRACE_S = 10.0  # how long a stopped task may take to close its MLflow run before SIGKILL


class LocalRun:
    """One local run's folder and identity."""

    def __init__(self, run_dir: Path, job_id: str, resumed: bool, previous_driver: dict[str, str] | None = None):
        self.run_dir, self.job_id, self.resumed = run_dir, job_id, resumed
        self.previous_driver = previous_driver  # a resumed run: the driver of its last attempt

    @property
    def name(self) -> str:
        return self.run_dir.name


def find_run(output_dir: Path, ref: str) -> Path:
    """The run folder `ref` names: a folder name under `output_dir` or a path."""
    for cand in (output_dir / ref, Path(ref).expanduser()):
        if (cand / JOB_FILE).is_file():
            return cand.resolve()
    raise ConfigError(f"--resume {ref}: no run folder with {JOB_FILE} at {output_dir / ref} or {ref}")


def resume_config(output_dir: Path, ref: str, config_path: str | None, overrides: list[str]) -> PipelineConfig:
    """The config of a resumed run: the run folder's own (or `config_path`), with `overrides`."""
    run_dir = find_run(output_dir, ref)
    return load_config(config_path or run_dir / CONFIG_FILE, overrides)


def open_run(output_dir: Path, cfg: PipelineConfig, resume: str = "") -> LocalRun:
    """Create a new run folder (a unique name even for runs started in the same second), or open
    the one being resumed; set the config's local defaults (checkpoints in the run folder) and
    write job.json and config.json."""
    if resume:
        run_dir = find_run(output_dir, resume)
        job = json.loads((run_dir / JOB_FILE).read_text())
        driver = {str(k): str(v) for k, v in (job.get("driver") or {}).items()}
        if procs.alive(driver) is True:
            raise ConfigError(f"--resume {resume}: that run is still running (pid {driver.get('pid')}); stop it "
                              "first (Ctrl-C, or kill its pid)")
        run = LocalRun(run_dir, str(job["job_id"]), resumed=True, previous_driver=driver)
    else:
        stamp = time.strftime("run-%Y%m%d-%H%M%S")
        for n in range(1, 1000):
            run_dir = output_dir / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                run_dir.mkdir(parents=True)
                break
            except FileExistsError:
                continue
        run = LocalRun(run_dir, str(uuid.uuid4()), resumed=False)
    for section, stage in (("train", "mtl"), ("continued_train", "reset")):
        tc = getattr(cfg, section)
        if not tc.checkpoint_dir:  # a stable place: the step's output folder changes with each attempt
            tc.checkpoint_dir = str(run.run_dir / "checkpoints" / stage)
    job = {"job_id": run.job_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "output_dir": str(output_dir),
           "attempts": 1, "driver": procs.identity()}
    if run.resumed:
        old = json.loads((run.run_dir / JOB_FILE).read_text())
        job.update(created=old.get("created", job["created"]), attempts=int(old.get("attempts", 1)) + 1)
    _write_json(run.run_dir / CONFIG_FILE, to_dict(cfg))
    _write_json(run.run_dir / JOB_FILE, job)
    return run


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ clean stops
class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM raises like Ctrl-C while the pipeline runs (so both stop it cleanly)."""

    def handler(signum, frame):  # noqa: ARG001 - the signal module's signature
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def task_processes() -> list[int]:
    """The kfp.local task processes this driver started (each a shell running the KFP executor)
    and every process below them; nothing else this process may have started."""
    tree = procs.children_map()
    out: list[int] = []
    for child in tree.get(os.getpid(), []):
        if "kfp.dsl.executor_main" in procs.cmdline(child):
            out.append(child)
            out.extend(procs.descendants(child, tree))
    return out


def stop_tasks(grace_s: float = GRACE_S) -> list[int]:
    """Stop the running task and what it started: SIGINT, so a step closes its MLflow run as
    KILLED, then SIGKILL after `grace_s`. Returns the pids."""
    pids = task_processes()
    procs.stop(pids, grace_s=grace_s)
    return pids


def close_runs(cfg: PipelineConfig, run: LocalRun) -> str:
    """Mark the stopped run's MLflow runs KILLED; "" or why they could not be (the tracking server
    may be what went away: `runs cleanup` closes them later)."""
    from reset import tracking

    try:
        tracking.kill_job_runs(cfg.tracking, run.job_id)
    except Exception as exc:  # noqa: BLE001 - a stop must end with its line, whatever MLflow says
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return ""


def stop_leftovers(run: LocalRun, wait_s: float = GRACE_S) -> list[int]:
    """A resumed run whose last driver was killed outright: the processes that driver started
    (its tasks, its vLLM worker: they name it in their environment) stop by themselves within about
    a second; any still running after `wait_s` is killed, so that no process of the last attempt
    outlives it (and its MLflow runs are found dead). Returns the pids that had to be killed."""
    if not run.previous_driver:
        return []
    left = procs.with_identity_in_env(procs.DRIVER_ENV, run.previous_driver)
    deadline = time.monotonic() + wait_s
    while left and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the processes' exit with a deadline
        left = procs.running(left)
    if left:
        procs.stop(left, grace_s=2.0, sig=signal.SIGKILL)
    return left


def mark_dead(cfg: PipelineConfig) -> list[dict[str, str]]:
    """Runs of earlier local runs on this store whose process is gone, marked KILLED (none when
    the store cannot be searched right now: the next run or `runs cleanup` will)."""
    from reset import tracking

    try:
        return tracking.mark_dead_runs(cfg.tracking.tracking_uri, [cfg.tracking.experiment])
    except Exception:  # noqa: BLE001 - housekeeping must not stop a run that preflight let through
        return []


def exit_code(exc: BaseException) -> int:
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


def stopped_line(run: LocalRun, step: str, output_dir: Path, not_closed: str = "", command: str = "run") -> str:
    where = f" in step {step}" if step else ""
    ref = run.name if run.run_dir.parent == output_dir else str(run.run_dir)
    extra = "" if output_dir == Path("runs").resolve() else f" --output-dir {output_dir}"
    closed = (f"its MLflow runs could not be marked KILLED ({not_closed}; `python -m pipelines runs cleanup` "
              "will)" if not_closed else "its MLflow runs are marked KILLED")
    return (f"[reset-kfp] stopped{where}: {closed}; resume with: "
            f"python -m pipelines {command} --resume {ref}{extra}")


# ---------------------------------------------------------------------------- reused task outputs
class CacheHits(logging.Handler):
    """Calls `say(step)` when kfp.local reuses a task's cached outputs (it logs that at INFO)."""

    _HIT = re.compile(r"Task (\S+) cache hit")

    def __init__(self, say: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        m = self._HIT.search(record.getMessage())
        if m:
            self.say(display(m.group(1)))


@contextmanager
def report_cache_hits(say: Callable[[str], None]) -> Iterator[None]:
    root = logging.getLogger()
    handler, level = CacheHits(say), root.level
    root.addHandler(handler)
    root.setLevel(min(level or logging.WARNING, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# ---------------------------------------------------------------------------------- runs cleanup
def add_parser(sub) -> None:
    r = sub.add_parser("runs", help="local runs: mark the MLflow runs of local jobs that died KILLED")
    rsub = r.add_subparsers(dest="runs_command", required=True)
    c = rsub.add_parser("cleanup", help="mark RUNNING MLflow runs whose local process is gone KILLED",
                        description="Every RUNNING MLflow run (pipeline parent or step) started by a local run on this "
                                    "machine whose process no longer exists is marked KILLED. Runs of live "
                                    "processes, of other machines and of cluster runs are left alone.")
    c.add_argument("--output-dir", default="runs", help="the local store runs/mlflow.db (default: runs)")
    c.add_argument("--tracking-uri", default="", help="an MLflow tracking URI instead of the local store")
    c.add_argument("--config", help="take the tracking URI from this config's tracking section")


def main(args: argparse.Namespace) -> int:
    from reset import tracking

    uri = args.tracking_uri
    if not uri and args.config:
        uri = load_config(args.config).tracking.tracking_uri
    if not uri:
        db = Path(args.output_dir).resolve() / "mlflow.db"
        if not db.exists():
            print(f"no local MLflow store at {db}: nothing to clean up")
            return 0
        uri = f"sqlite:///{db}"
    marked = tracking.mark_dead_runs(uri)
    for m in marked:
        print(f"marked KILLED: run {m['run_id']} ({m['name']}, experiment {m['experiment']!r}): "
              f"its local process {m['pid']} is gone")
    print(f"{len(marked)} run(s) of local jobs that are gone marked KILLED at {uri}")
    return 0


def cleanup_line(marked: list[dict[str, str]]) -> str:
    return (f"  (marked KILLED {len(marked)} MLflow run(s) of earlier local runs whose process is gone: "
            f"{', '.join(sorted({m['name'] for m in marked}))})")


@contextmanager
def environ_restored():
    """The process environment put back as it was afterwards (also a decorator): a local run sets
    its job id and driver there for its task processes, and a caller in the same process (a
    notebook, a test, a second run) must not inherit them."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def env_for_tasks(run: LocalRun) -> dict[str, str]:
    """What the task processes inherit: the job id their steps find the MLflow parent by, the
    driver they watch, that preflight already ran, and where steps keep the chunks of their results
    that a resumed run continues from (reset.data.chunks)."""
    from reset import preflight, tracking
    from reset.data import chunks

    return {tracking.JOB_ENV: run.job_id, procs.DRIVER_ENV: json.dumps(procs.identity()), preflight.ENV: "done",
            chunks.RESUME_ENV: str(run.run_dir / "resume")}


def print_problems(problems: list[Any], file=None) -> None:
    """One line per problem (and, for several, a line counting them); nothing was started."""
    file = file or sys.stderr
    for p in problems:
        print(f"preflight: {p}", file=file)
    if len(problems) > 1:
        print(f"preflight: {len(problems)} problems; nothing was started", file=file)


# ------------------------------------------------------------------------ kfp.local sessions
def kfp_session(console, pipeline_root: Path, cache_root: Path | None, run: Callable[[], Any]) -> str:
    """Run `run` (a pipeline call) through kfp.local's SubprocessRunner in this environment, the
    tasks' output filed by the console; "" or the error kfp.local raised. One helper for run,
    experiment and promote."""
    import warnings

    from kfp import local

    from pipelines.console import captured

    # Expected locally: the image and Kubernetes settings only matter on a cluster.
    warnings.filterwarnings("ignore", message=".*non-Python base image")
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
    with captured(console):
        try:
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
                       enable_caching=cache_root is not None,
                       **({"cache_root": str(cache_root)} if cache_root is not None else {}))
            run()
        except RuntimeError as exc:
            return str(exc)
    return ""


def local_engine_server(cfg: PipelineConfig, folder: Path):
    """The vLLM worker for a local run of `cfg` (generate.vllm_engine_server), started; None where
    the steps would not use one (hf backend, vLLM in-process, no vLLM environment, a GPU)."""
    from reset.evaluation.runner import greedy_config
    from reset.models.generation import vllm_server

    if not cfg.generate.vllm_engine_server or vllm_server.gpu_visible():
        return None
    python = vllm_server.engine_server_python([cfg.generate, greedy_config(cfg.evaluate)])
    if python is None:
        return None
    return vllm_server.EngineServer.start(python, folder, vllm_server.worker_env(cfg.generate),
                                          keep_s=cfg.generate.vllm_engine_keep_s)


# ------------------------------------------------------------------------------ local runs
@environ_restored()
def run_local(cfg: PipelineConfig, output_dir: Path, verbose: bool = False, resume: str = "",
              experiment: bool = False) -> int:
    """Run the pipeline through kfp.local. Prints one line per step, then the results; the tasks'
    own output goes to <output_dir>/<run>/logs/. Preflight first (one line per problem, exit 2,
    nothing started); Ctrl-C stops cleanly (exit 130); `resume` names a run folder to resume
    (pipelines/local_runs.py)."""
    from pipelines import definitions
    from pipelines.console import Console
    from reset import preflight, progress, tracking
    from reset.evaluation import comparison_table

    output_dir = output_dir.resolve()
    procs.interruptible()  # started as a background job: Ctrl-C and the stops must still reach the tasks
    work = preflight.run(cfg, output_dir=output_dir)  # PreflightError: one line per problem, nothing started
    output_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.tracking.tracking_uri:
        cfg.tracking.tracking_uri = tracking.local_tracking_uri(output_dir)
    tracking.prepare_store(cfg.tracking.tracking_uri)  # runs starting at once on a new store
    run = open_run(output_dir, cfg, resume)
    run_dir = run.run_dir
    os.environ[progress.ENV] = "1"  # the task processes print ##reset events for the console
    os.environ.update(env_for_tasks(run))  # the job id the steps find the MLflow parent run by
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    console = Console(sys.stdout, run_dir / "logs", verbose=verbose)
    what = f"resuming run folder {run_dir}" if run.resumed else f"run folder {run_dir}"
    if experiment:
        console.say(f"The paper's experiment, locally (kfp.local): arms {', '.join(cfg.experiment.arms)}, "
                    f"seeds {cfg.experiment.seeds}, {what}")
    else:
        console.say(f"ReSet pipeline, locally (kfp.local): {len(SECTIONS)} config sections, {what}")
        console.say(f"  {work.line(cfg.model.max_run_sequences)}")
    if killed := stop_leftovers(run):
        console.say(f"  (stopped {len(killed)} process(es) the last attempt's driver left running: pids "
                    f"{', '.join(map(str, killed))})")
    if marked := mark_dead(cfg):
        console.say(cleanup_line(marked))
    engine = local_engine_server(cfg, run_dir / "vllm")
    if engine is not None:
        os.environ.update(engine.env)
        console.say(f"vLLM: one worker for the whole run (its log: {engine.log_path})")
    try:
        t0 = time.time()
        error = ""
        try:
            with stop_signals(), report_cache_hits(lambda step: console.say(f"  {step:<15} reused (finished before)")):
                which = definitions.get(definitions.EXPERIMENT if experiment else definitions.TRAINING)
                error = kfp_session(console, output_dir / "kfp", run_dir / "cache",
                                    lambda: which.build(cfg, local=True)(**which.arguments(cfg)))
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: stop the tasks, close the MLflow runs
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
            try:
                stop_tasks()
                not_closed = close_runs(cfg, run)
            finally:
                signal.signal(signal.SIGINT, old)
            print(stopped_line(run, console.current_step, output_dir, not_closed,
                               "experiment" if experiment else "run"), file=sys.stderr)
            return exit_code(exc)
    finally:
        if engine is not None:
            engine.stop()
    wall = time.time() - t0
    if error:
        for line in console.failure_report(error):
            print(line, file=sys.stderr)
        where, why = console.failure
        print(f"[reset-kfp] pipeline failed after {wall:.0f}s in {where}: {why}", file=sys.stderr)
        return 1
    summary = {"wall_seconds": round(wall, 1), "run_dir": str(run_dir),
               **run_summary(cfg, os.environ[tracking.JOB_ENV])}
    for path in (output_dir / "last_run.json", run_dir / "run.json"):
        path.write_text(json.dumps(summary, indent=2))

    print(f"\nDone in {wall / 60:.1f} min. Held-out comparison, 95% intervals:\n")
    if experiment and summary.get("experiment"):
        print(summary["experiment"])
    else:
        print(summary.get("headline") or comparison_table(summary.get("results", {})))
    if summary.get("registered"):
        print(f"\nregistry: {summary['registered']}")
    uri = cfg.tracking.tracking_uri
    if summary.get("report"):
        print(f"\nreport: {summary['report']}")
    print(f"logs: {run_dir / 'logs'}   summary: {output_dir / 'last_run.json'}")
    print(f"MLflow: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    return 0


def run_summary(cfg: PipelineConfig, job_id: str = "") -> dict[str, Any]:
    """A pipeline run as MLflow recorded it (the one of local job `job_id`, else the latest):
    per-step wall time, the evaluation results per model, the headline table with intervals and
    verdicts, where the report is, and the registry decision (read back from the runs)."""
    import mlflow

    from reset import tracking

    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return {}
    query = f"tags.`{tracking.JOB_TAG}` = '{job_id}'" if job_id else "tags.`reset.role` = 'pipeline'"
    parents = client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        return {}
    pid = parents[0].info.run_id
    headline, report = _parent_report(client, parents[0])
    try:
        experiment = Path(client.download_artifacts(pid, "experiment.md")).read_text(encoding="utf-8")
    except Exception:  # not an experiment run
        experiment = ""
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{pid}'",
                              order_by=["attributes.start_time ASC"])
    steps = {}
    registered = ""
    results: dict[str, dict[str, float]] = {}
    for r in kids:
        name = r.data.tags.get(tracking.STEP_TAG, r.info.run_name)
        if r.info.end_time:
            steps[name] = round((r.info.end_time - r.info.start_time) / 1000, 1)
        if name == "evaluate":
            for key, value in r.data.metrics.items():
                model, _, metric = key.partition(".")
                results.setdefault(model, {})[metric] = value
        if name == "register":
            registered = (f"{r.data.tags.get('registered_model')} v{r.data.tags.get('registered_version')}: "
                          f"{r.data.tags.get('promotion')}")
    order = {"base": 0, "mtl": 1, "reset": 2}
    results = dict(sorted(results.items(), key=lambda kv: order.get(kv[0], 9)))
    return {"parent_run_id": pid, "status": parents[0].info.status, "step_seconds": steps,
            "results": results, "registered": registered, "headline": headline, "report": report,
            "experiment": experiment,
            "verdict": parents[0].data.tags.get("reset.verdict", "")}


def _parent_report(client, parent) -> tuple[str, str]:
    """(the headline table and verdicts logged on the parent run, the report's location)."""
    from urllib.parse import unquote, urlparse

    try:
        headline = client.download_artifacts(parent.info.run_id, "headline.md")
        text = Path(headline).read_text(encoding="utf-8")
    except Exception:  # an older run, or evaluate did not finish
        text = ""
    uri = parent.info.artifact_uri.rstrip("/") + "/report.html"
    where = unquote(urlparse(uri).path) if uri.startswith("file:") else uri
    return text, where


# ---------------------------------------------------------------------------------- promotion
@environ_restored()  # the job id set for the tasks must not outlive the promotion
def promote_local(cfg: PipelineConfig, output_dir: Path, challenger: str = "") -> int:
    """The promotion pipeline through kfp.local; prints the outcome and its reason."""
    from pipelines import definitions
    from pipelines.console import Console
    from reset import progress, tracking

    output_dir = Path(output_dir).resolve()
    run_dir = output_dir / f"promote-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    if not cfg.tracking.tracking_uri:
        cfg.tracking.tracking_uri = tracking.local_tracking_uri(output_dir)
    os.environ[progress.ENV] = "1"
    job = str(uuid.uuid4())
    os.environ[tracking.JOB_ENV] = job  # the promotion's MLflow run is tagged with it
    console = Console(sys.stdout, run_dir / "logs")
    console.say(f"ReSet promotion, locally (kfp.local): {cfg.register.model_name}, challenger "
                f"{challenger or '@' + cfg.register.challenger_alias}")
    which = definitions.get(definitions.PROMOTION)
    error = kfp_session(console, run_dir / "kfp", None,
                        lambda: which.build(cfg, local=True)(**which.arguments(cfg, challenger=challenger)))
    if error:
        for line in console.failure_report(error):
            print(line, file=sys.stderr)
        return 1
    result = promotion_result(cfg, job)
    print(f"{result.get('reset.outcome', '?')}: {result.get('reset.reason', '')}")
    return 0


def promotion_result(cfg: PipelineConfig, job: str) -> dict[str, str]:
    """The tags of the promotion run tagged with KFP job `job`."""
    import mlflow

    from reset import tracking

    exp = tracking.experiment_id(cfg.tracking)
    runs = mlflow.MlflowClient().search_runs([exp], f"tags.`{tracking.JOB_TAG}` = '{job}' and tags.`reset.role` = "
                                             "'promotion'", max_results=1)
    return dict(runs[0].data.tags) if runs else {}
