"""Kubeflow Pipelines commands: upload, submit, schedule, promote, champion (through `kfp.Client`).

    python -m pipelines upload   --config C --host H [--namespace NS] [--version NAME]
    python -m pipelines submit   --config C --host H [--namespace NS] [--experiment E] [--run-name R]
                                 [--service-account SA] [--pipeline-root URI] [--pipeline-version NAME]
                                 [--wait [--timeout S]]
    python -m pipelines schedule --config C --host H --cron "0 0 2 * * 6" [--name N] [...as submit]
    python -m pipelines promote  --config C [--challenger V]                      (locally, kfp.local)
    python -m pipelines promote  --config C --host H [...as submit] [--wait]      (the promotion pipeline)
    python -m pipelines champion --config C [--env-file manifests/serving/champion.env]

The pipeline a command runs follows the config (pipelines/definitions.py): the experiment
(`reset-experiment`) for a config with an `experiment:` section such as configs/experiment.yaml,
else the ReSet pipeline (`reset`); `--pipeline` names one. upload: that pipeline and the promotion
pipeline (`reset-promotion`), compiled from the config, each as a pipeline version named by the git
commit (HEAD; a dirty tree adds "-dirty-<UTC time>"), in the namespace when given; a version that
exists is reused.
submit / schedule / promote --host: a run (or a recurring run) in an experiment of the namespace,
with the service account and pipeline root given, parameters from the config; the pipeline is an
uploaded version (`--pipeline-version`) or compiled and sent inline. `--wait` prints the run's state
and each task's state as they change, and exits 0 only when the run succeeded.
champion: the champion's version and where its plain weights are (the registry's tag), written as
the env file manifests/serving reads.

The API token comes from KFP_TOKEN (a bearer token) and is sent as a header only; it never goes
into a request body, a pipeline parameter or the output. The cluster's Secrets stay Secrets.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines import definitions, local_runs
from pipelines.definitions import EXPERIMENT, PROMOTION, TRAINING
from reset import tracking
from reset.config import ConfigError, PipelineConfig

COMMANDS = ("upload", "submit", "schedule", "promote", "champion")
FINAL = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
DEFAULT_TIMEOUT_S = 3 * 24 * 3600


def add_parsers(sub, common) -> None:
    """Register the commands on the CLI's subparsers; `common` adds --config and --set."""

    def kfp(sp, *, required: bool = True):
        sp.add_argument(
            "--host",
            required=required,
            help="KFP API endpoint (https://...); the bearer token comes "
            "from the environment variable KFP_TOKEN, never from a flag",
        )
        sp.add_argument("--namespace", default="", help="Kubeflow profile namespace (multi-user KFP)")

    def run_opts(sp):
        sp.add_argument("--experiment", default="reset", help="KFP experiment (created in the namespace if needed)")
        sp.add_argument(
            "--service-account",
            default="",
            help="Kubernetes service account of the run's pods, e.g. reset-pipeline (manifests/base/rbac.yaml)",
        )
        sp.add_argument(
            "--pipeline-root",
            default="",
            help="where KFP writes the run's artifacts, e.g. s3://reset-data/kfp (default: the cluster's)",
        )
        sp.add_argument(
            "--pipeline-version",
            default="",
            metavar="NAME",
            help="run this uploaded version (see "
            "upload; e.g. the commit) instead of compiling the config's pipeline and sending it inline",
        )

    def wait_opts(sp):
        sp.add_argument(
            "--wait",
            action="store_true",
            help="print the run's and its tasks' states until it ends; exit 0 only when it succeeded",
        )
        sp.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="seconds --wait waits (default 3 days)")
        sp.add_argument("--poll", type=float, default=30.0, help="seconds between two looks at the run (default 30)")

    def which(sp):
        sp.add_argument(
            "--pipeline",
            choices=["auto", TRAINING, EXPERIMENT],
            default="auto",
            help="the ReSet pipeline or the experiment (default: the experiment for a config with an "
            "experiment section, e.g. configs/experiment.yaml)",
        )

    u = sub.add_parser(
        "upload", help="upload the config's pipeline and the promotion pipeline as versions named by the git commit"
    )
    common(u)
    kfp(u)
    which(u)
    u.add_argument("--version", default="", help="version name (default: the git commit of this checkout)")

    s = sub.add_parser("submit", help="start a run of the config's pipeline on a Kubeflow Pipelines host")
    common(s)
    kfp(s)
    which(s)
    run_opts(s)
    s.add_argument("--run-name", default="", help="the run's name (default: reset <commit> <UTC time>)")
    wait_opts(s)

    sc = sub.add_parser("schedule", help="create a recurring run of the config's pipeline")
    common(sc)
    kfp(sc)
    which(sc)
    run_opts(sc)
    sc.add_argument(
        "--cron",
        required=True,
        help='KFP cron, 6 fields with seconds first ("0 0 2 * * 6": Saturdays 02:00) or @daily / @weekly / @every 24h',
    )
    sc.add_argument("--name", default="reset-scheduled", help="the recurring run's name")
    sc.add_argument("--max-concurrency", type=int, default=1, help="runs of it at once (default 1)")
    sc.add_argument("--catchup", action="store_true", help="backfill intervals missed while paused (default: no)")

    p = sub.add_parser("promote", help="run the promotion pipeline: locally (kfp.local), or on a host (--host)")
    common(p)
    kfp(p, required=False)
    run_opts(p)
    p.add_argument("--challenger", default="", help="version to promote (default: the challenger alias)")
    p.add_argument("--run-name", default="", help="the KFP run's name (with --host)")
    p.add_argument("--output-dir", default="runs", help="locally: KFP artifacts and logs (default: runs)")
    wait_opts(p)

    c = sub.add_parser("champion", help="the champion's version and weights location (for manifests/serving)")
    common(c)
    c.add_argument(
        "--env-file",
        default="",
        help="write STORAGE_URI / MODEL_NAME / MODEL_VERSION here (e.g. manifests/serving/champion.env)",
    )


def main(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    if args.command == "upload":
        return upload(cfg, args)
    if args.command == "submit":
        return submit(cfg, args, definitions.for_config(cfg, args.pipeline))
    if args.command == "schedule":
        return schedule(cfg, args)
    if args.command == "promote":
        if args.host:
            return submit(cfg, args, PROMOTION)
        return local_runs.promote_local(cfg, args.output_dir, args.challenger)
    if args.command == "champion":
        return champion(cfg, args.env_file)
    raise ValueError(args.command)


# ------------------------------------------------------------------------------------------ helpers
def git_version(cwd: str | os.PathLike[str] = ".") -> str:
    """The checkout's commit; "-dirty-<UTC time>" appended when tracked files differ from it."""

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"--version: no git commit to name the version by ({exc}); pass --version") from None
    return f"{sha}-dirty-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}" if dirty else sha


def client(args: argparse.Namespace):
    """kfp.Client for --host / --namespace with KFP_TOKEN as the bearer token."""
    import warnings

    import kfp

    warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline", category=FutureWarning)
    token = os.environ.get("KFP_TOKEN", "").strip() or None
    return kfp.Client(host=args.host, existing_token=token, namespace=args.namespace or "kubeflow")


def _check_cluster_config(cfg: PipelineConfig, preflight: bool = False) -> None:
    """Refuse what cannot work on a cluster before contacting the host; with `preflight`, also check
    from here what a training run needs (reset/preflight.py; the first task checks the rest)."""
    if problem := tracking.cluster_store_problem(cfg.tracking.tracking_uri):
        raise ConfigError(problem)
    if preflight:
        from reset import preflight as pf

        pf.run(cfg, where="submit")  # PreflightError: one line per problem (the CLI prints them)


def _by_name(items, name: str):
    return [x for x in items or [] if x.display_name == name]


def _equals(key: str, value: str) -> str:
    import json

    return json.dumps({"predicates": [{"operation": 1, "key": key, "stringValue": value}]})


def find_pipeline(kfp_client, name: str, namespace: str) -> str | None:
    res = kfp_client.list_pipelines(filter=_equals("display_name", name), namespace=namespace or None, page_size=100)
    found = _by_name(res.pipelines, name)
    return found[0].pipeline_id if found else None


def find_version(kfp_client, pipeline_id: str, version: str) -> str | None:
    res = kfp_client.list_pipeline_versions(pipeline_id, filter=_equals("display_name", version), page_size=100)
    found = _by_name(res.pipeline_versions, version)
    return found[0].pipeline_version_id if found else None


# ------------------------------------------------------------------------------------------ upload
def upload(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    _check_cluster_config(cfg)
    version = args.version or git_version()
    if "-dirty-" in version:
        print(f"warning: uncommitted changes: uploading as {version}", file=sys.stderr)
    kc = client(args)
    with tempfile.TemporaryDirectory() as tmp:
        for which in (definitions.for_config(cfg, args.pipeline), PROMOTION):
            path = os.path.join(tmp, f"{which}.yaml")
            definitions.compile_to(cfg, which, path)
            pid = find_pipeline(kc, which, args.namespace)
            if pid is None:
                pid = kc.upload_pipeline(
                    path,
                    pipeline_name=which,
                    namespace=args.namespace or None,
                    description=f"ReSet {which} (python -m pipelines upload)",
                ).pipeline_id
                print(f"created pipeline {which} ({pid})")
            vid = find_version(kc, pid, version)
            if vid is not None:
                print(f"{which}: version {version} exists ({vid}): kept")
                continue
            vid = kc.upload_pipeline_version(
                path, pipeline_version_name=version, pipeline_id=pid, description=f"{which} at {version}"
            ).pipeline_version_id
            print(f"{which}: uploaded version {version} ({vid})")
    return 0


# ------------------------------------------------------------------------------------------ runs
def _pipeline_ref(kc, args, which: str) -> tuple[str, str]:
    pid = find_pipeline(kc, which, args.namespace)
    vid = find_version(kc, pid, args.pipeline_version) if pid else None
    if not vid:
        raise ConfigError(
            f"--pipeline-version: no version {args.pipeline_version!r} of pipeline {which!r} at "
            f"{args.host}{' in ' + args.namespace if args.namespace else ''}: run `python -m pipelines "
            "upload` first"
        )
    return pid, vid


def _job(kc, cfg: PipelineConfig, args, which: str, tmp: str) -> dict[str, Any]:
    """The pipeline (an uploaded version or a package compiled here) and its parameters."""
    challenger = getattr(args, "challenger", "")
    params = definitions.get(which).arguments(cfg, challenger=challenger)
    if args.pipeline_version:
        pid, vid = _pipeline_ref(kc, args, which)
        return {"pipeline_id": pid, "version_id": vid, "params": params}
    path = os.path.join(tmp, f"{which}.yaml")
    definitions.compile_to(cfg, which, path, challenger=challenger)
    return {"pipeline_package_path": path, "params": params}


def submit(cfg: PipelineConfig, args: argparse.Namespace, which: str = TRAINING) -> int:
    _check_cluster_config(cfg, preflight=which != PROMOTION)  # before contacting the host
    kc = client(args)
    exp = kc.create_experiment(args.experiment, namespace=args.namespace or None)
    name = args.run_name or f"{which} {args.pipeline_version[:12] or 'inline'} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    with tempfile.TemporaryDirectory() as tmp:
        job = _job(kc, cfg, args, which, tmp)
        run = kc.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=name,
            pipeline_root=args.pipeline_root or None,
            service_account=args.service_account or None,
            **job,
        )
    print(
        f"submitted {which} run {run.run_id} ({name!r}) to {args.host} in experiment {args.experiment!r}"
        + (f", namespace {args.namespace}" if args.namespace else "")
    )
    if not args.wait:
        return 0
    state = wait(kc, run.run_id, args.timeout, args.poll)
    return 0 if state == "SUCCEEDED" else 1


def wait(kc, run_id: str, timeout_s: float, poll_s: float = 30.0, out=None) -> str:
    """Poll the run until a final state or the timeout; print the run's and tasks' state changes."""
    out = out or sys.stdout
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    state = ""
    t0 = time.monotonic()
    while True:
        run = kc.get_run(run_id)
        now = str(run.state or "PENDING")
        stamp = f"[{time.monotonic() - t0:7.0f}s]"
        if now != state:
            print(f"{stamp} run {run_id}: {now}", file=out, flush=True)
            state = now
        details = getattr(run, "run_details", None)
        for t in getattr(details, "task_details", None) or []:
            key, tstate = t.task_id or t.display_name, str(t.state or "")
            if t.display_name and seen.get(key) != tstate:
                seen[key] = tstate
                print(f"{stamp}   {t.display_name}: {tstate}", file=out, flush=True)
        if state in FINAL:
            if state != "SUCCEEDED":
                err = getattr(run, "error", None)
                failed = [t.display_name for t in getattr(details, "task_details", None) or [] if t.state == "FAILED"]
                print(
                    f"run {run_id} {state}"
                    + (f" in {', '.join(failed)}" if failed else "")
                    + (f": {err.message}" if err is not None and getattr(err, "message", "") else ""),
                    file=out,
                )
            return state
        if time.monotonic() >= deadline:
            print(f"run {run_id} still {state} after {timeout_s:.0f}s; it goes on on the cluster", file=out)
            return "TIMEOUT"
        time.sleep(poll_s)  # a poll interval bounded by the deadline above


def check_cron(cron: str) -> str:
    """KFP's cron (robfig/cron with seconds): 6 fields, or a descriptor such as @daily / @every 24h."""
    text = cron.strip()
    if text.startswith("@"):
        return text
    fields = text.split()
    if len(fields) == 5:
        raise ConfigError(f"--cron {cron!r}: KFP's cron has 6 fields, seconds first: '0 {text}'")
    if len(fields) != 6:
        raise ConfigError(f"--cron {cron!r}: expected 6 fields (second minute hour day-of-month month day-of-week)")
    return text


def schedule(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    cron = check_cron(args.cron)
    _check_cluster_config(cfg, preflight=True)
    kc = client(args)
    exp = kc.create_experiment(args.experiment, namespace=args.namespace or None)
    with tempfile.TemporaryDirectory() as tmp:
        job = _job(kc, cfg, args, definitions.for_config(cfg, args.pipeline), tmp)
        rr = kc.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=args.name,
            cron_expression=cron,
            max_concurrency=args.max_concurrency,
            no_catchup=not args.catchup,
            pipeline_root=args.pipeline_root or None,
            service_account=args.service_account or None,
            enabled=True,
            **job,
        )
    print(f"recurring run {rr.recurring_run_id} ({args.name!r}, cron {cron!r}) in experiment {args.experiment!r}")
    return 0


def champion(cfg: PipelineConfig, env_file: str = "") -> int:
    from reset.promotion import champion_location

    try:
        loc = champion_location(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = f"STORAGE_URI={loc['weights_uri']}\nMODEL_NAME={loc['model_name']}\nMODEL_VERSION={loc['version']}\n"
    if env_file:
        Path(env_file).write_text(text)
        print(f"wrote {env_file}: {loc['model_name']} v{loc['version']} at {loc['weights_uri']}")
    else:
        sys.stdout.write(text)
    return 0
