"""reset-kfp: run the ReSet pipeline locally, compile it for Kubeflow, or submit it to a cluster.

    python -m pipelines run     --config configs/demo.yaml [--set train.epochs=2 ...] [--output-dir runs]
    python -m pipelines compile --config configs/demo.yaml --output reset_pipeline.yaml
    python -m pipelines compile --config configs/experiment.yaml --output experiment.yaml   (the experiment)
    python -m pipelines upload  --config configs/paper-7b.yaml --host https://kfp.example.com --namespace NS
    python -m pipelines submit  --config configs/paper-7b.yaml --host https://kfp.example.com --namespace NS --wait
    python -m pipelines schedule / promote / champion   (the cluster commands: see pipelines/kfp_api.py)
    python -m pipelines schema  [--output config.schema.json]
    python -m pipelines data check PATH... [--format F]   (is this data usable? see pipelines/data_cli.py)

`run` executes the same pipeline definition a cluster runs, through kfp.local's SubprocessRunner
in this Python environment (pipelines/local_runs.py); MLflow goes to runs/mlflow.db unless
tracking.tracking_uri is set. This module parses and dispatches; the pipelines and their
parameters are pipelines/definitions.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines import definitions, local_runs
from reset import tracking
from reset.config import ConfigError, load_config
from reset.errors import DataError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reset-kfp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config_required=True):
        sp.add_argument("--config", required=config_required, help="YAML config (see configs/)")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one config value (YAML-parsed); repeatable",
        )

    r = sub.add_parser("run", help="run the whole pipeline locally through kfp.local")
    common(r, config_required=False)  # required unless --resume (pipelines/local_runs.py)
    r.add_argument(
        "--resume",
        default="",
        metavar="RUN",
        help="resume a stopped or failed run (its folder under "
        "--output-dir, e.g. run-20250101-120000): reuse what finished, run the rest (config: the run's own)",
    )
    r.add_argument(
        "--output-dir", default="runs", help="KFP artifacts, MLflow store and the run summary (default: runs)"
    )
    r.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show every task's output inline (it always goes to the run's logs/ folder)",
    )
    e = sub.add_parser("experiment", help="run the paper's arms and a control locally (experiment.arms / .seeds)")
    common(e, config_required=False)  # required unless --resume
    e.add_argument(
        "--resume",
        default="",
        metavar="RUN",
        help="resume a stopped or failed experiment (its run folder): reuse every task that finished, "
        "run the rest; with --set, tasks whose inputs change run again",
    )
    e.add_argument(
        "--output-dir", default="runs", help="KFP artifacts, MLflow store and the run summary (default: runs)"
    )
    e.add_argument("--verbose", "-v", action="store_true", help="show every task's output inline")
    c = sub.add_parser("compile", help="compile to a KFP pipeline YAML (parameters default to the config)")
    common(c)
    c.add_argument("--output", required=True, help="where to write the pipeline YAML")
    c.add_argument(
        "--pipeline",
        choices=["auto", *definitions.DEFINITIONS],
        default="auto",
        help="which pipeline (default: the experiment for a config with an experiment section that "
        "lists seeds and arms, i.e. configs/experiment.yaml; else the ReSet pipeline)",
    )
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
        if args.command in ("run", "experiment") and args.resume:
            cfg = local_runs.resume_config(Path(args.output_dir).resolve(), args.resume, args.config, args.overrides)
        elif args.config is None:
            raise ConfigError("--config is required (or --resume RUN)")
        else:
            cfg = load_config(args.config, args.overrides)
        if args.command == "run":
            return local_runs.run_local(cfg, Path(args.output_dir), verbose=args.verbose, resume=args.resume)
        if args.command == "experiment":
            return local_runs.run_local(cfg, Path(args.output_dir), verbose=args.verbose, resume=args.resume,
                                        experiment=True)
        if args.command == "compile":
            which = definitions.for_config(cfg, args.pipeline)
            definitions.compile_to(cfg, which, args.output)
            print(f"compiled the {which} pipeline to {args.output}")
            if problem := tracking.cluster_store_problem(cfg.tracking.tracking_uri):
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


if __name__ == "__main__":
    raise SystemExit(main())
