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

from reset import procs
from reset.config import ConfigError, PipelineConfig, load_config, to_dict

JOB_FILE = "job.json"
CONFIG_FILE = "config.json"
GRACE_S = 10.0  # how long a stopped task may take to close its MLflow run before SIGKILL
# kfp.local's task names -> the step names the console shows
TASK_STEPS = {"mix-data": "mix", "generate-candidates": "generate", "judge-candidates": "judge",
              "select-samples": "select", "evaluate-models": "evaluate", "register-model": "register"}


class LocalRun:
    """One local run's folder and identity."""

    def __init__(self, run_dir: Path, job_id: str, resumed: bool):
        self.run_dir, self.job_id, self.resumed = run_dir, job_id, resumed

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
        run = LocalRun(run_dir, str(job["job_id"]), resumed=True)
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


def stopped_line(run: LocalRun, step: str, output_dir: Path, not_closed: str = "") -> str:
    where = f" in step {step}" if step else ""
    ref = run.name if run.run_dir.parent == output_dir else str(run.run_dir)
    extra = "" if output_dir == Path("runs").resolve() else f" --output-dir {output_dir}"
    closed = (f"its MLflow runs could not be marked KILLED ({not_closed}; `python -m pipelines runs cleanup` "
              "will)" if not_closed else "its MLflow runs are marked KILLED")
    return (f"[reset-kfp] stopped{where}: {closed}; resume with: "
            f"python -m pipelines run --resume {ref}{extra}")


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
            self.say(TASK_STEPS.get(m.group(1), m.group(1)))


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
    driver they watch, and that preflight already ran."""
    from reset import preflight, tracking

    return {tracking.JOB_ENV: run.job_id, procs.DRIVER_ENV: json.dumps(procs.identity()), preflight.ENV: "done"}


def print_problems(problems: list[Any], file=None) -> None:
    """One line per problem (and, for several, a line counting them); nothing was started."""
    file = file or sys.stderr
    for p in problems:
        print(f"preflight: {p}", file=file)
    if len(problems) > 1:
        print(f"preflight: {len(problems)} problems; nothing was started", file=file)
