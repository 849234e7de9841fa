"""Variants of one selected arm (ReSet, ReSet-S), scored on the dev split, from a finished local
experiment's artifacts: one seed's MTL checkpoint and the judged candidates it sampled are reused,
so a variant costs a selection (a second), a continued fine-tuning and its share of one evaluation.

    .venv/bin/python bench/dev_ablation.py --run runs/kfp/reset-experiment-2026-12-05-... --arm reset-s \\
        --variant 'family select.stratify=family' \\
        --variant 'family-5ep select.stratify=family continued_train.epochs=5' --out runs/ablation

A variant is a name, then `section.key=value` changes (YAML values) applied on top of the arm's
overlay in --config. Evaluated together on the experiment's dev split: MTL, the arm as it ran,
and each variant (one engine, greedy). Printed and written to --out/ablation.json: every variant
against the arm and against MTL on the two gated axes (paired: McNemar score test with Tango's
interval for IF, paired t for faithfulness), p-values Holm-adjusted over the variants. The dev
split is where settings are chosen (docs/design.md "Splits"); this never reads the test split.
RESET_VLLM_PYTHON names vLLM's environment as for a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reset import steps  # noqa: E402
from reset.config.loading import load_config  # noqa: E402
from reset.evaluation.metrics import PRIMARY  # noqa: E402
from reset.evaluation.statistics import holm  # noqa: E402
from reset.evaluation.summary import summarize  # noqa: E402
from reset.experiments.arms import arm_config, overlay  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """'name section.key=value ...' -> (name, {section: {key: value}})."""
    name, *changes = text.split()
    out: dict[str, dict[str, Any]] = {}
    for c in changes:
        key, sep, value = c.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise SystemExit(f"--variant {name!r}: {c!r} is not section.key=value")
        out.setdefault(section, {})[field] = yaml.safe_load(value)
    return name, out


def _provenance_stage(task: Path) -> str:
    p = task / "checkpoint" / "reset_provenance.json"
    return json.loads(p.read_text())["stage"] if p.exists() else ""


def find_artifacts(run: Path, iteration: int, arm: str) -> dict[str, Path]:
    """The MTL and arm checkpoints (by their provenance's stage), the candidates sampled from MTL
    and their judgments, the seen prompts and the dev split of one seed of an experiment run."""
    loop = sorted(run.glob(f"for-loop-*-iteration-{iteration}"))
    if not loop:
        raise SystemExit(f"{run}: no for-loop-*-iteration-{iteration} (a local experiment's kfp folder?)")
    seed_dir = loop[0]
    stages = {_provenance_stage(t): t / "checkpoint" for t in seed_dir.glob("finetune*")}
    for need in ("mtl", arm):
        if need not in stages:
            raise SystemExit(f"{seed_dir}: no checkpoint of stage {need!r} (found {sorted(s for s in stages if s)})")
    mtl = stages["mtl"]
    cands = None
    for t in sorted(seed_dir.glob("generate-candidates*")):
        first = (t / "candidates").open().readline()
        if first and json.loads(first).get("model") in (str(mtl), "mtl"):
            cands = t / "candidates"
    if cands is None:  # the experiment names the model by path; fall back to the first generation
        cands = sorted(seed_dir.glob("generate-candidates*"))[0] / "candidates"
    judged = [t / "judgments" for t in sorted(seed_dir.glob("judge-candidates*"))]
    ids = {json.loads(line)["id"] for line in cands.open()}
    judgments = next((j for j in judged if json.loads(j.open().readline())["candidate_id"] in ids), None)
    if judgments is None:
        raise SystemExit(f"{seed_dir}: no judgments of {cands}")
    mix = run / "mix-data"
    if not (mix / "dev_set").exists() or not (mix / "dev_set").stat().st_size:
        raise SystemExit(f"{mix}: no dev split (data.dev_per_kind: 0?)")
    return {"mtl": mtl, "arm": stages[arm], "candidates": cands, "judgments": judgments,
            "seen": mix / "seen_prompts", "dev": mix / "dev_set", "test": mix / "test_set",
            "sections": run / "start-run" / "sections"}


def compare(rows_by_model: dict[str, list[dict[str, Any]]], names: list[str], reference: str) -> list[dict[str, Any]]:
    s = summarize(rows_by_model, reference=reference)
    out = []
    for n in names:
        for axis in PRIMARY:
            t = s.comparisons[n][axis]
            out.append({"variant": n, "against": reference, "axis": axis, "diff": t.diff, "low": t.low,
                        "high": t.high, "p": t.p_value})
    adjusted = holm([r["p"] for r in out])
    for r, p in zip(out, adjusted, strict=True):
        r["holm_p"] = p
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a local experiment's kfp folder (runs/kfp/reset-experiment-...)")
    ap.add_argument("--config", default=str(REPO / "configs" / "experiment.yaml"), help="the experiment's config")
    ap.add_argument("--arm", default="reset-s", help="the selected arm the variants change (reset, reset-s)")
    ap.add_argument("--iteration", type=int, default=0, help="the seed's loop iteration (0: the first seed)")
    ap.add_argument("--variant", action="append", required=True, help="'name section.key=value ...'")
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args(argv)

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = find_artifacts(run, args.iteration, args.arm)
    exp = load_config(args.config)
    seed = exp.experiment.seeds[args.iteration]
    base = overlay(steps.config(str(found["sections"])),
                   {"tracking": {"tracking_uri": f"sqlite:///{out.resolve()}/mlflow.db", "experiment": "dev-ablation"},
                    "evaluate": {"split": "dev"}}, "dev_ablation")
    arm_cfg = arm_config(base, args.arm, exp.experiment.overlays, seed=seed)
    models = {"mtl": str(found["mtl"]), args.arm: str(found["arm"])}
    trained: dict[str, Any] = {}
    for text in args.variant:
        name, changes = parse_variant(text)
        if name in models:
            raise SystemExit(f"--variant {name!r}: the name is taken")
        d = out / name
        d.mkdir(exist_ok=True)
        ct = {**changes.get("continued_train", {}), "checkpoint_dir": str(d / "resume")}
        cfg = overlay(arm_cfg, {**changes, "continued_train": ct}, f"--variant {name}")
        print(f"[ablation] {name}: {changes}", flush=True)
        report = steps.select(str(found["seen"]), str(found["candidates"]), str(found["judgments"]), cfg,
                              out_selected=str(d / "selected.jsonl"), out_report=str(d / "selection.json"),
                              own_plan=True, name=f"select-{name}")
        m = steps.finetune(str(found["mtl"]), str(d / "selected.jsonl"), cfg, stage=name,
                           out_dir=str(d / "checkpoint"), section="continued_train")
        trained[name] = {"selected": report["selected"], "steps": m["steps"], "changes": changes}
        models[name] = str(d / "checkpoint")
    steps.evaluate(models, str(found["test"]), base, out_metrics=str(out / "metrics.json"),
                   out_report=str(out / "report.md"), out_rows=str(out / "rows.jsonl"),
                   include_base=False, reference="mtl", candidate=args.arm, seed=seed, dev_path=str(found["dev"]))
    rows: dict[str, list[dict[str, Any]]] = {}
    for line in (out / "rows.jsonl").open():
        r = json.loads(line)
        rows.setdefault(r["model"], []).append(r)
    names = list(trained)
    result = {"run": str(run), "arm": args.arm, "seed": seed, "dev_prompts": len(rows["mtl"]), "variants": trained,
              "against_arm": compare(rows, names, args.arm), "against_mtl": compare(rows, [args.arm, *names], "mtl")}
    (out / "ablation.json").write_text(json.dumps(result, indent=2))
    print(f"\n[ablation] seed {seed}, dev split ({len(rows['mtl'])} prompts); Holm over the rows of each table")
    for key in ("against_arm", "against_mtl"):
        for r in result[key]:
            print(f"  {r['variant']:<20} vs {r['against']:<8} {r['axis']:<14} {r['diff']:+.3f} "
                  f"[{r['low']:+.3f}, {r['high']:+.3f}]  p={r['p']:.3f}  Holm p={r['holm_p']:.3f}")
    print(f"[ablation] {out / 'ablation.json'}, {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
