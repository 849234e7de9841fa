"""Where a local run's time goes: one row per step, its wall split into the process's start-up
(interpreter, kfp's executor, imports), model loading, engine start, compute and the rest (I/O,
MLflow logging), its throughput, and the time between and around the tasks; with --bench, each
fine-tuning and generation step's throughput as a ratio to a benchmark of the same settings run
right after it (back to back, on the same machine).

    .venv/bin/python bench/profile_run.py --run runs/run-20261205-010203            # a finished run
    .venv/bin/python bench/profile_run.py --config configs/demo.yaml [--bench]      # run it, then profile

Reads what the steps logged (reset.tracking.step_run: step.startup_s, step.body_s, phase.<name>_s,
and each step's own throughput metrics) from the run's MLflow store. The benchmarks (--bench):
bench/train_bench.py --config <the run's config> --section train|continued_train (our trainer
alone, the step's data size, LoRA shape, batch and precision) and bench/vllm_raw.py on the step's
own prompts and sampling settings (vLLM's engine called directly). Prints Markdown (docs/bench.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reset.experiments.arms import TRADEOFF_ARMS  # noqa: E402 - after the repository is on sys.path

PHASES = ("model_load", "engine_start", "compute", "score", "save")


def run_steps(run_dir: Path) -> tuple[list[dict], dict]:
    """The step runs of a local run (by its job id), in start order, and the parent run."""
    import mlflow

    job = json.loads((run_dir / "job.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    uri = cfg.get("tracking", {}).get("tracking_uri") or f"sqlite:///{Path(job['output_dir']) / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.get("tracking", {}).get("experiment", "reset"))
    parent = client.search_runs([exp.experiment_id], f"tags.`reset.kfp_job_id` = '{job['job_id']}'",
                                max_results=1)[0]
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    steps = []
    for r in kids:
        if not r.info.end_time or "reset.step" not in r.data.tags:
            continue
        m = r.data.metrics
        steps.append({"step": r.data.tags["reset.step"], "start": r.info.start_time / 1000,
                      "end": r.info.end_time / 1000, "metrics": m, "params": r.data.params})
    return steps, {"start": parent.info.start_time / 1000, "end": (parent.info.end_time or 0) / 1000,
                   "config": cfg, "uri": uri}


def _throughput(s: dict) -> tuple[str, float]:
    m = s["metrics"]
    if s["step"].startswith("finetune"):
        return "train tokens/s", m.get("tokens_per_second", 0.0)
    if "tokens_per_second" in m:
        return "output tokens/s", m["tokens_per_second"]
    return "", 0.0


def table(steps: list[dict], parent: dict, bench: dict[str, float] | None = None) -> str:
    lines = ["| step | task wall (s) | start-up + imports | model load | engine start | compute | other (I/O, MLflow) "
             "| throughput | vs benchmark |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total = {"wall": 0.0, "startup": 0.0, "other": 0.0}
    for s in steps:
        m = s["metrics"]
        startup, body = m.get("step.startup_s", 0.0), m.get("step.body_s", s["end"] - s["start"])
        phases = {p: m.get(f"phase.{p}_s", 0.0) for p in PHASES}
        compute = phases["compute"] + phases["score"]
        other = max(0.0, body - phases["model_load"] - phases["engine_start"] - compute)
        wall = startup + body
        total["wall"] += wall
        total["startup"] += startup
        total["other"] += other
        label, tps = _throughput(s)
        ratio = f"{tps / bench[s['step']]:.2f}x" if bench and bench.get(s["step"]) else ""
        lines.append(f"| {s['step']} | {wall:.1f} | {startup:.1f} | {phases['model_load']:.1f} | "
                     f"{phases['engine_start']:.1f} | {compute:.1f} | {other:.1f} | "
                     + (f"{tps:.0f} {label}" if label else "") + f" | {ratio} |")
    span = (steps[-1]["end"] - parent["start"]) if steps else 0.0
    between = span - sum(s["end"] - s["start"] for s in steps)
    per_task = between / max(len(steps), 1)
    lines += ["", f"From the parent run's start to the last step's end: {span:.1f} s; in the steps' bodies "
                  f"{span - between:.1f} s; between and around them {between:.1f} s ({per_task:.1f} s "
                  f"per task, of which {total['startup']:.1f} s is the tasks' own start-up and imports)."]
    return "\n".join(lines)


TRADEOFF_TASKS = {f"finetune-{a}" for a in TRADEOFF_ARMS}


def loop_of(s: dict) -> str:
    """Which part of the experiment pipeline a step run belongs to: "once" (mix, the base model's
    answers), "tradeoff" (the trade-off arms and their evaluation: no MTL among its models) or
    "seeds" (MTL and what continues it, their evaluation)."""
    if s["step"] in ("mix", "answer", "report"):
        return "once"
    if s["step"] in TRADEOFF_TASKS or (s["step"] == "evaluate" and not any(k.startswith("mtl.") for k in s["metrics"])):
        return "tradeoff"
    return "seeds"


def projection(steps: list[dict], parent: dict, seeds: int, baseline: float | None = None) -> str:
    """An experiment run of one seed, extended to `seeds`: the once-only tasks once, the seeds' loop
    `seeds` times, the trade-off arms' loop on experiment.tradeoff_seed_count of them (and on every
    seed, for comparison), each task with the run's own measured time between tasks."""
    span = steps[-1]["end"] - parent["start"]
    per_task = (span - sum(s["end"] - s["start"] for s in steps)) / max(len(steps), 1)
    cost = {"once": 0.0, "seeds": 0.0, "tradeoff": 0.0}
    count = {"once": 0, "seeds": 0, "tradeoff": 0}
    for s in steps:
        part = loop_of(s)
        cost[part] += s["end"] - s["start"] + per_task
        count[part] += 1
    exp = parent["config"].get("experiment", {})
    ran = len(exp.get("seeds") or [0])
    if ran != 1:
        raise SystemExit(f"--seeds projects from a one-seed run; this one ran {ran} seeds")
    n_trade = min(exp.get("tradeoff_seed_count") or seeds, seeds)
    lines = [f"One seed, measured: {span:.1f} s (the once-only tasks {cost['once']:.1f} s in {count['once']} tasks; "
             f"the seeds' loop {cost['seeds']:.1f} s in {count['seeds']}; the trade-off arms' loop "
             f"{cost['tradeoff']:.1f} s in {count['tradeoff']}; {per_task:.1f} s between tasks counted with each)."]
    for label, trade in ((f"trade-off arms on {n_trade} seed(s) (experiment.tradeoff_seed_count)", n_trade),
                         ("every arm on every seed", seeds)):
        total = span + (seeds - 1) * cost["seeds"] + (trade - 1) * cost["tradeoff"]
        vs = f"; {total / baseline:.2f}x the baseline's {baseline:.1f} s" if baseline else ""
        lines.append(f"{seeds} seeds, {label}: {total:.1f} s ({total / 60:.1f} min), {total / span:.2f}x one seed{vs}.")
    return "\n".join(lines)


def kfp_dir(run_dir: Path, within_s: int = 10) -> Path | None:
    """The kfp.local outputs of a run (runs/kfp/<pipeline>-<timestamp>-...): the first folder stamped
    at the run's second or up to `within_s` seconds after it (kfp.local names it when the pipeline
    starts, a moment after the run folder)."""
    import datetime as dt

    start = dt.datetime.strptime(run_dir.name.removeprefix("run-"), "%Y%m%d-%H%M%S")  # run-20261205-010203
    for k in range(within_s + 1):
        want = (start + dt.timedelta(seconds=k)).strftime("%Y-%m-%d-%H-%M-%S")
        hits = sorted(p for p in (run_dir.parent / "kfp").glob(f"*-{want}-*") if p.is_dir())
        if hits:
            return hits[-1]
    return None


def _bench(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"benchmark failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mtl_output(kfp: Path) -> Path | None:
    """The MTL fine-tuning's output folder: kfp.local names a task's folder by its component
    ("finetune", then "finetune-2" for the continued one); "finetune-mtl" in runs made before the
    one-step table."""
    return next((p for d in ("finetune-mtl", "finetune") if (kfp / d).is_dir()
                 for p in sorted((kfp / d).iterdir()) if p.is_dir()), None)


def benchmarks(steps: list[dict], config: str, kfp: Path) -> dict[str, float]:
    """Each fine-tuning and generation step's benchmark on its own inputs, one after the other:
    our trainer alone on the step's data and section (bench/train_bench.py --config), vLLM's raw
    engine on the seen prompts and the config's sampling settings (bench/generate_bench.py)."""
    out: dict[str, float] = {}
    for s in steps:
        name, n = s["step"], int(s["metrics"].get("steps", 0))
        if name == "finetune-mtl":
            cmd = ["bench/train_bench.py", "--config", config, "--section", "train", "--json",
                   "--data", str(kfp / "mix-data" / "train_set")]
        elif name == "finetune-reset":
            mtl = _mtl_output(kfp)
            cmd = ["bench/train_bench.py", "--config", config, "--section", "continued_train", "--json",
                   "--data", str(kfp / "select-samples" / "selected_set")] + (["--model", str(mtl)] if mtl else [])
        elif name == "generate":  # the raw engine on the model the step samples from: MTL
            mtl = _mtl_output(kfp)
            cmd = ["bench/generate_bench.py", "--config", config, "--only-raw", "--json",
                   "--prompts", str(kfp / "mix-data" / "seen_prompts")] + (["--model-from", str(mtl)] if mtl else [])
        else:
            continue
        if n and "train_bench" in cmd[0]:
            cmd += ["--steps", str(n)]
        print(f"benchmark of {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        r = _bench(cmd)
        out[name] = r.get("tokens_per_second") or r["tokens_per_s"]
        print(f"benchmark of {name}: {out[name]:.0f} tokens/s", file=sys.stderr, flush=True)

    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/profile_run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a finished local run's folder (runs/run-...)")
    ap.add_argument("--config", help="run this config first (python -m pipelines run), then profile it")
    ap.add_argument("--output-dir", default="runs/profile", help="with --config: where the run goes")
    ap.add_argument("--bench", action="store_true", help="also run the benchmarks of the same settings, after")
    ap.add_argument("--seeds", type=int, default=0,
                    help="an experiment run of one seed: project N seeds from its measured tasks")
    ap.add_argument("--baseline", help="with --seeds: a run folder whose wall time the projection is a ratio to")
    args = ap.parse_args(argv)
    if not args.run and not args.config:
        ap.error("give --run or --config")
    if args.config:
        t0 = time.time()
        rc = subprocess.run([sys.executable, "-m", "pipelines", "run", "--config", args.config, "--output-dir",
                             args.output_dir], cwd=REPO, env={**os.environ}).returncode
        if rc:
            return rc
        run_dir = Path(json.loads((Path(args.output_dir) / "last_run.json").read_text())["run_dir"])
        print(f"\nthe run took {time.time() - t0:.1f} s of wall (process)\n")
    else:
        run_dir = Path(args.run)
    steps, parent = run_steps(run_dir)
    bench: dict[str, float] = {}
    if args.bench:
        kfp = kfp_dir(run_dir)
        if kfp is None:
            raise SystemExit(f"{run_dir}: no kfp.local outputs beside it (runs/kfp/*): --bench needs the step inputs")
        cfg_path = run_dir / "config.bench.yaml"
        cfg_path.write_text(json.dumps(parent["config"]))  # JSON is YAML: the run's own config
        bench = benchmarks(steps, str(cfg_path), kfp)
    print(table(steps, parent, bench))
    if args.seeds:
        base = None
        if args.baseline:
            b_steps, b_parent = run_steps(Path(args.baseline))
            base = b_steps[-1]["end"] - b_parent["start"]
        print("\n" + projection(steps, parent, args.seeds, base))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
