"""reset-kfp: run the ReSet pipeline locally, compile it for Kubeflow, or submit it to a cluster.

    python -m pipelines run     --config configs/demo.yaml [--set train.epochs=2 ...] [--output-dir runs]
    python -m pipelines compile --config configs/demo.yaml --output reset_pipeline.yaml
    python -m pipelines upload  --config configs/paper-7b.yaml --host https://kfp.example.com --namespace NS
    python -m pipelines submit  --config configs/paper-7b.yaml --host https://kfp.example.com --namespace NS --wait
    python -m pipelines schedule / promote / champion   (the cluster commands: see pipelines/kfp_api.py)
    python -m pipelines schema  [--output config.schema.json]
    python -m pipelines data check PATH... [--format F]   (is this data usable? see pipelines/data_cli.py)

`run` executes the same pipeline definition a cluster runs, through kfp.local's SubprocessRunner
in this Python environment; MLflow goes to runs/mlflow.db unless tracking.tracking_uri is set.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pipelines import local_runs
from reset.config import SECTIONS, ConfigError, PipelineConfig, load_config, to_dict
from reset.errors import DataError


def pipeline_arguments(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline's parameters: the run form's typed scalars (their keys taken out of the
    sections) and one plain dict per config section."""
    from reset.config.run_parameters import split_run_parameters

    sections, scalars = split_run_parameters({name: to_dict(getattr(cfg, name)) for name in SECTIONS})
    return {**scalars, **sections}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reset-kfp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config_required=True):
        sp.add_argument("--config", required=config_required, help="YAML config (see configs/)")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (YAML-parsed); repeatable")

    r = sub.add_parser("run", help="run the whole pipeline locally through kfp.local")
    common(r, config_required=False)  # required unless --resume (pipelines/local_runs.py)
    r.add_argument("--resume", default="", metavar="RUN", help="resume a stopped or failed run (its folder under "
                   "--output-dir, e.g. run-20250101-120000): reuse what finished, run the rest (config: the run's own)")
    r.add_argument("--output-dir", default="runs", help="KFP artifacts, MLflow store and the run summary (default: runs)")
    r.add_argument("--verbose", "-v", action="store_true", help="show every task's output inline (it always goes to "
                   "the run's logs/ folder)")
    e = sub.add_parser("experiment", help="run the paper's arms and a control locally (experiment.arms / .seeds)")
    common(e)
    e.add_argument("--output-dir", default="runs", help="KFP artifacts, MLflow store and the run summary (default: runs)")
    e.add_argument("--verbose", "-v", action="store_true", help="show every task's output inline")
    c = sub.add_parser("compile", help="compile to a KFP pipeline YAML (parameters default to the config)")
    common(c)
    c.add_argument("--output", required=True, help="where to write the pipeline YAML")
    from pipelines import kfp_api

    kfp_api.add_parsers(sub, common)  # upload, submit, schedule, promote, champion (pipelines/kfp_api.py)
    sc = sub.add_parser("schema", help="write the JSON Schema of a config file (for editors and docs)")
    sc.add_argument("--output", default="-", help="where to write it (default: standard output)")
    from pipelines import data_cli

    data_cli.add_parser(sub)  # data check PATH... [--format F]
    local_runs.add_parser(sub)  # runs cleanup
    return p


def main(argv: list[str] | None = None) -> int:
    from reset.preflight import PreflightError

    args = _parser().parse_args(argv)
    try:
        if args.command == "schema":
            return write_schema(args.output)
        if args.command == "data":
            from pipelines import data_cli

            return data_cli.main(args)
        if args.command == "runs":
            return local_runs.main(args)
        if args.command == "run" and args.resume:
            cfg = local_runs.resume_config(Path(args.output_dir).resolve(), args.resume, args.config, args.overrides)
        elif args.config is None:
            raise ConfigError("--config is required (or --resume RUN)")
        else:
            cfg = load_config(args.config, args.overrides)
        if args.command == "run":
            return run_local(cfg, Path(args.output_dir), verbose=args.verbose, resume=args.resume)
        if args.command == "experiment":
            return run_local(cfg, Path(args.output_dir), verbose=args.verbose, experiment=True)
        if args.command == "compile":
            compile_pipeline(cfg, args.output)
            print(f"compiled {args.output}")
            if problem := cluster_tracking_problem(cfg):
                print(f"warning: {problem} (override it when you start the run)", file=sys.stderr)
            return 0
        from pipelines import kfp_api

        return kfp_api.main(args, cfg)
    except PreflightError as exc:
        local_runs.print_problems(exc.problems)
        return 2
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before or after the pipeline itself (run_local handles it inside)
        print("[reset-kfp] interrupted", file=sys.stderr)
        return 130


def write_schema(output: str) -> int:
    from reset.config import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
        print(f"wrote the config JSON Schema to {output}")
    return 0


def cluster_tracking_problem(cfg: PipelineConfig) -> str:
    """Why this config's MLflow store cannot serve a cluster run ("" if it can): every step runs
    in its own pod, so they must share one tracking server."""
    uri = cfg.tracking.tracking_uri.strip()
    if not uri or uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return (f"tracking.tracking_uri is {uri or 'empty (a local SQLite file)'}: on a cluster each step runs in its "
                "own pod, so set it to a shared MLflow server (http://... or https://...)")
    return ""


def compile_pipeline(cfg: PipelineConfig, output: str) -> None:
    from kfp import compiler
    from kfp.components import load_component_from_file

    from pipelines.reset_pipeline import build_pipeline

    llm = any(j.startswith("llm-") for j in cfg.judge.judges)
    compiler.Compiler().compile(build_pipeline(cfg.cluster, llm_judges=llm), output,
                                pipeline_parameters=pipeline_arguments(cfg))
    load_component_from_file(output)  # kfp's own loader must read it back


@local_runs.environ_restored()
def run_local(cfg: PipelineConfig, output_dir: Path, verbose: bool = False, resume: str = "",
              experiment: bool = False) -> int:
    """Run the pipeline through kfp.local. Prints one line per step, then the results; the tasks'
    own output goes to <output_dir>/<run>/logs/. Preflight first (one line per problem, exit 2,
    nothing started); Ctrl-C stops cleanly (exit 130); `resume` names a run folder to resume
    (pipelines/local_runs.py)."""
    import warnings

    from kfp import local

    from pipelines.console import Console, captured
    from pipelines.reset_pipeline import build_pipeline
    from reset import preflight, progress, steps, tracking
    from reset.evaluation import comparison_table

    output_dir = output_dir.resolve()
    preflight.run(cfg, output_dir=output_dir)  # PreflightError: one line per problem, nothing started
    output_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.tracking.tracking_uri:
        cfg.tracking.tracking_uri = tracking.local_tracking_uri(output_dir)
    tracking.prepare_store(cfg.tracking.tracking_uri)  # runs starting at once on a new store
    run = local_runs.open_run(output_dir, cfg, resume)
    run_dir = run.run_dir
    # Expected locally: the image and Kubernetes settings only matter on a cluster.
    warnings.filterwarnings("ignore", message=".*non-Python base image")
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
    os.environ[progress.ENV] = "1"  # the task processes print ##reset events for the console
    os.environ.update(local_runs.env_for_tasks(run))  # the job id the steps find the MLflow parent run by
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    console = Console(sys.stdout, run_dir / "logs", verbose=verbose)
    what = f"resuming run folder {run_dir}" if run.resumed else f"run folder {run_dir}"
    if experiment:
        console.say(f"The paper's experiment, locally (kfp.local): arms {', '.join(cfg.experiment.arms)}, "
                    f"seeds {cfg.experiment.seeds}, {what}")
    else:
        console.say(f"ReSet pipeline, locally (kfp.local): {len(SECTIONS)} config sections, {what}")
    if marked := local_runs.mark_dead(cfg):
        console.say(local_runs.cleanup_line(marked))
    engine = steps.local_engine_server(cfg, run_dir / "vllm")
    if engine is not None:
        os.environ.update(engine.env)
        console.say(f"vLLM: one worker for the whole run (its log: {engine.log_path})")
    try:
        t0 = time.time()
        error = ""
        try:
            with local_runs.stop_signals(), captured(console), \
                    local_runs.report_cache_hits(lambda step: console.say(f"  {step:<15} reused (finished before)")):
                try:
                    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output_dir / "kfp"),
                               enable_caching=True, cache_root=str(run_dir / "cache"))
                    if experiment:
                        from pipelines.experiment_pipeline import build_experiment

                        build_experiment(cfg)(tracking=to_dict(cfg.tracking))
                    else:
                        build_pipeline(shards=cfg.cluster.shards)(**pipeline_arguments(cfg))
                except RuntimeError as exc:
                    error = str(exc)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: stop the tasks, close the MLflow runs
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
            try:
                local_runs.stop_tasks()
                not_closed = local_runs.close_runs(cfg, run)
            finally:
                signal.signal(signal.SIGINT, old)
            print(local_runs.stopped_line(run, console.current_step, output_dir, not_closed), file=sys.stderr)
            return local_runs.exit_code(exc)
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


if __name__ == "__main__":
    raise SystemExit(main())
