"""The pipeline's steps as plain functions over files and config sections (dicts, as KFP passes
them). Each step validates its config, reads its inputs, calls the method module, writes its
outputs and logs a child MLflow run. The KFP components in components/ are one call to these;
a step can be run and debugged alone from Python with local paths.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reset import config as C
from reset import progress, tracking
from reset.data.records import Candidate, Example, Judgment, read_jsonl, write_jsonl, write_quarantine
from reset.models import loading as modeling

Section = Mapping[str, Any] | None


def _log(msg: str) -> None:
    print(msg, flush=True)


def _note(text: str) -> None:
    """The one-line summary the CLI shows when the step ends."""
    progress.emit("note", text=text)


def _by_kind(rep: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for group, g in rep["per_group"].items():
        kind = group.rsplit("/", 1)[-1]
        acc = out.setdefault(kind, {"kept": 0, "prompts": 0})
        acc["kept"] += g["kept"]
        acc["prompts"] += g["prompts"]
    return out


def _tracking(d: Section) -> C.TrackingConfig:
    return C.section(C.TrackingConfig, dict(d or {}), "tracking")


def _read(path: str, cls):
    rows, _ = read_jsonl(path, cls)  # step-to-step files are ours: any bad row is a bug, so fail
    return rows


def _metric_name(name: str) -> str:
    """MLflow accepts letters, digits, _ - . space / : only; source names are free text."""
    return re.sub(r"[^\w\-. /:]", "_", name)


def _metrics(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


# --------------------------------------------------------------------------------------------- steps
def start_run(tracking_cfg: Section, pipeline_config: Mapping[str, Any], job_id: str,
              tags: Mapping[str, str] | None = None) -> str:
    """Create the parent run of the pipeline job `job_id` (validating the whole config first)."""
    C.validate(C.PipelineConfig, dict(pipeline_config))  # fail fast, naming the bad key
    cfg = _tracking(tracking_cfg)
    run_id = tracking.start_parent(cfg, pipeline_config, {**(tags or {}), tracking.JOB_TAG: job_id})
    _log(f"[mlflow] parent run {run_id} at {tracking.resolve_uri(cfg)} (experiment {cfg.experiment!r})")
    return run_id


def finish_run(tracking_cfg: Section, job_id: str) -> str:
    """Close the parent run of pipeline job `job_id`; "NONE" when the job failed before creating it."""
    cfg = _tracking(tracking_cfg)
    parent = tracking.find_parent(cfg, job_id)
    if parent is None:
        _log(f"[mlflow] no parent run for job {job_id}: the pipeline failed before it started")
        return "NONE"
    status = tracking.finish_parent(cfg, parent)
    _log(f"[mlflow] parent run {parent}: {status}")
    return status


def mix(data: Section, tracking_cfg: Section, parent_run_id: str, *, out_train: str, out_eval: str,
        out_seen: str, out_rejected: str, cache_dir: str = "") -> dict[str, Any]:
    from reset.data import mix as M

    cfg = C.section(C.DataConfig, dict(data or {}), "data")
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, "mix", cfg.model_dump()):
        import mlflow

        rows: dict[str, list[Example]] = {"instruction": [], "grounded": []}
        rejected = []
        origins: M.Origins = {}
        for slot in rows:
            for src in getattr(cfg, slot):
                kept, bad = M.load_source(src, slot, cfg, cache_dir, origins)
                _log(f"[mix] {src.path}: {len(kept)} {slot} examples, {len(bad)} rejected")
                rows[slot] += kept
                rejected += bad
        result = M.mix(rows["instruction"], rows["grounded"], cfg, origins)
        rejected += result.rejected
        write_jsonl(out_train, result.train)
        write_jsonl(out_eval, result.eval)
        write_jsonl(out_seen, result.seen)
        write_quarantine(out_rejected, rejected)
        stats = {**result.stats, "rejected": len(rejected)}
        _log(f"[mix] {json.dumps(stats)}")
        _note(f"{stats['train']} train, {stats['eval']} held-out, {stats['seen_prompts']} seen prompts, "
              f"{stats['rejected']} rejected")
        for r in rejected[:10]:
            _log(f"[mix] rejected {r}")
        mlflow.log_metrics(_metrics(stats))
        mlflow.log_artifact(out_rejected, "quarantine")
        for name, records in (("train", result.train), ("eval", result.eval), ("seen_prompts", result.seen)):
            mlflow.log_input(_dataset(records, name), context=name)
    return stats


def _dataset(records: list[Example], name: str):
    """An MLflow dataset (name, digest, schema, a preview) of a split, for the run's inputs."""
    import mlflow
    import pandas as pd

    cols = ("id", "source", "kind", "task", "instruction", "context", "response")
    df = pd.DataFrame([{c: getattr(r, c) for c in cols} for r in records], columns=list(cols))
    return mlflow.data.from_pandas(df, name=name)


def finetune(model: str | None, train_path: str, train: Section, model_cfg: Section, tracking_cfg: Section,
             parent_run_id: str, *, stage: str, out_dir: str) -> dict[str, Any]:
    """stage "mtl": `model` is None (the configured base model, model.base) or a model reference;
    stage "reset": the MTL checkpoint directory."""
    from reset.models.finetune import finetune as run_finetune

    tcfg = C.section(C.TrainConfig, dict(train or {}), "continued_train" if stage == "reset" else "train")
    mcfg = C.section(C.ModelConfig, dict(model_cfg or {}), "model")
    examples = _read(train_path, Example)
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, f"finetune-{stage}",
                           {"stage": stage, "train": tcfg.model_dump(), "model": mcfg.model_dump()}):
        import mlflow

        model = model or mcfg.base  # a reference, a model directory or a LoRA checkpoint (resolved there)
        metrics = run_finetune(
            model, examples, out_dir, tcfg, mcfg,
            provenance={"stage": stage, "source_model": model, "train_examples": len(examples)},
            log=_log, on_step=lambda step, loss: mlflow.log_metric("loss", loss, step=step),
        )
        mlflow.log_metrics(_metrics({k: v for k, v in metrics.items() if k != "loss_history"}))
        mlflow.log_dict(modeling.read_provenance(out_dir), "provenance.json")
        _note(f"{metrics['steps']} steps on {metrics['examples']} examples, loss {metrics['first_loss']:.2f} -> "
              f"{metrics['final_loss']:.2f}, {metrics['tokens'] / max(metrics['seconds'], 1e-9):.0f} tokens/s")
    return metrics


def generate(model_dir: str, seen_path: str, generate_cfg: Section, model_cfg: Section, tracking_cfg: Section,
             parent_run_id: str, *, out_candidates: str) -> dict[str, Any]:
    from reset.models.generation import run as run_generate

    gcfg = C.section(C.GenerateConfig, dict(generate_cfg or {}), "generate")
    mcfg = C.section(C.ModelConfig, dict(model_cfg or {}), "model")
    examples = _read(seen_path, Example)
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, "generate", gcfg.model_dump()):
        import mlflow

        t0 = time.time()
        result = run_generate(model_dir, examples, gcfg, mcfg, model_name="mtl", log=_log)
        cands = result.candidates
        if gcfg.include_reference:
            cands += [Candidate(id=f"{e.id}/ref", example_id=e.id, text=e.response,
                                decoding={"strategy": "reference"}, model="reference", is_reference=True)
                      for e in examples]
        write_jsonl(out_candidates, cands)
        secs = time.time() - t0
        gen = result.stats
        stats = {"prompts": len(examples), "candidates": len(cands), "seconds": secs,
                 "samples_per_second": len(cands) / secs if secs else 0.0,
                 "empty_candidates": sum(1 for c in cands if not c.text.strip()),
                 "engine_start_seconds": gen.get("engine_start_s", 0.0),
                 "generate_seconds": gen.get("generate_s", 0.0), "output_tokens": gen.get("output_tokens", 0),
                 "tokens_per_second": gen.get("tokens_per_s", 0.0), "prompts_cut": gen.get("prompts_cut", 0)}
        mlflow.log_metrics(_metrics(stats))
        mlflow.set_tags({"generate.backend": gen.get("backend", ""),
                         **({"generate.fallback_reason": gen["fallback_reason"]} if "fallback_reason" in gen else {})})
        _note(f"{len(cands)} candidates for {len(examples)} prompts with {gen.get('backend')} "
              f"({stats['tokens_per_second']:.0f} tokens/s, engine start {stats['engine_start_seconds']:.0f}s)")
    return stats


def judge(seen_path: str, candidates_path: str, judge_cfg: Section, tracking_cfg: Section, parent_run_id: str,
          *, out_judgments: str, cache_dir: str = "") -> dict[str, Any]:
    from reset.judging import build_judges, close_judges
    from reset.judging import judge as run_judge

    jcfg = C.section(C.JudgeConfig, dict(judge_cfg or {}), "judge")
    examples = _read(seen_path, Example)
    cands = _read(candidates_path, Candidate)
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, "judge", jcfg.model_dump()):
        import mlflow

        judges = build_judges(jcfg, cache_dir)
        _log(f"[judge] {len(cands)} candidates, judges: {', '.join(f'{j.name} ({j.axis})' for j in judges)}")
        try:
            judgments = run_judge(examples, cands, jcfg.weights, judges, jcfg.judge_weights)
        finally:  # LLM judges: requests, retries, cache hits, tokens, cost (once per shared ledger)
            close_judges(judges)
            logged: set[int] = set()
            for j in judges:
                stats = getattr(j, "stats", None)
                ledger = id(getattr(j, "ledger", j))
                if callable(stats) and ledger not in logged:
                    logged.add(ledger)
                    values = _metrics(stats())
                    mlflow.log_metrics({f"llm.{k}": v for k, v in values.items()})
                    _log(f"[judge] LLM judge: {json.dumps(values)}")
        write_jsonl(out_judgments, judgments)
        stats = _axis_means(judgments)
        stats["judgments"] = len(judgments)
        _log(f"[judge] {json.dumps({k: round(v, 4) for k, v in stats.items()})}")
        _note(f"{len(judgments)} judged by {', '.join(j.name for j in judges)}; mean score {stats['mean_combined']:.3f}")
        mlflow.log_metrics(_metrics(stats))
        by_ex = {e.id: e for e in examples}
        by_c = {c.id: c for c in cands}
        table = {
            "example_id": [j.example_id for j in judgments],
            "candidate_id": [j.candidate_id for j in judgments],
            "source": [by_ex[j.example_id].source for j in judgments],
            "kind": [by_ex[j.example_id].kind for j in judgments],
            "instruction": [by_ex[j.example_id].instruction for j in judgments],
            "response": [by_c[j.candidate_id].text for j in judgments],
            "strategy": [str(by_c[j.candidate_id].decoding.get("strategy")) for j in judgments],
            "temperature": [by_c[j.candidate_id].decoding.get("temperature") for j in judgments],
            **{f"score_{a}": [j.scores.get(a) for j in judgments] for a in ("instruction", "faithfulness", "task")},
            **{f"judge_{n.name}": [j.details["by_judge"].get(n.name) for j in judgments] for n in judges},
            "combined": [j.combined for j in judgments],
            "rationale": [j.rationale for j in judgments],
        }
        mlflow.log_table(table, artifact_file="judged_samples.json")
    return stats


def _axis_means(judgments: list[Judgment]) -> dict[str, float]:
    out = {}
    for axis in ("instruction", "faithfulness", "task"):
        vals = [j.scores[axis] for j in judgments if j.scores.get(axis) is not None]
        if vals:
            out[f"mean_{axis}"] = sum(vals) / len(vals)
    out["mean_combined"] = sum(j.combined for j in judgments) / len(judgments) if judgments else 0.0
    return out


def select(seen_path: str, candidates_path: str, judgments_path: str, select_cfg: Section, tracking_cfg: Section,
           parent_run_id: str, *, out_selected: str) -> dict[str, Any]:
    from reset.selection import select as run_select

    scfg = C.section(C.SelectConfig, dict(select_cfg or {}), "select")
    examples = _read(seen_path, Example)
    cands = _read(candidates_path, Candidate)
    judgments = _read(judgments_path, Judgment)
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, "select", scfg.model_dump()):
        import mlflow

        sel = run_select(examples, cands, judgments, scfg)
        write_jsonl(out_selected, sel.examples)
        rep = sel.report
        _log(f"[select] mode {rep['mode']}: kept {rep['selected']}/{rep['prompts']} prompts "
             f"(keep rate {rep['keep_rate']:.2f}, mean score {rep['mean_selected_score']:.3f})")
        for group, g in rep["per_group"].items():
            _log(f"[select]   {group}: {g['kept']}/{g['prompts']} kept")
            mlflow.log_metric(_metric_name(f"keep_rate.{group.replace('/', '.')}"), g["keep_rate"])
        for task, g in rep["per_task"].items():
            _log(f"[select]   task {task}: {g['kept']}/{g['prompts']} kept")
            mlflow.log_metric(_metric_name(f"keep_rate.task.{task}"), g["keep_rate"])
        mlflow.log_metrics(_metrics(rep))
        mlflow.log_dict(rep, "selection_report.json")
        kinds = ", ".join(f"{k} {g['kept']}/{g['prompts']}" for k, g in _by_kind(rep).items())
        _note(f"kept {rep['selected']}/{rep['prompts']} prompts ({kinds}), mean score {rep['mean_selected_score']:.3f}")
    return rep


def evaluate(models: Mapping[str, str], eval_path: str, evaluate_cfg: Section, model_cfg: Section,
             judge_cfg: Section, tracking_cfg: Section, parent_run_id: str, *, out_metrics: str,
             out_report: str, out_rows: str, include_base: bool = True) -> dict[str, dict[str, float]]:
    """`models`: name -> model reference or directory (e.g. mtl, reset); with `include_base` the
    configured base model (model.base) is evaluated first as "base"."""
    from reset.evaluation import evaluate as run_evaluate
    from reset.evaluation import markdown_report, summarize, verdicts
    from reset.evaluation.html import html_report
    from reset.evaluation.plot import tradeoff_plot

    ecfg = C.section(C.EvaluateConfig, dict(evaluate_cfg or {}), "evaluate")
    mcfg = C.section(C.ModelConfig, dict(model_cfg or {}), "model")
    jcfg = C.section(C.JudgeConfig, dict(judge_cfg or {}), "judge")
    examples = _read(eval_path, Example)
    if include_base:
        models = {"base": mcfg.base, **models}
    results: dict[str, dict[str, float]] = {}
    rows_by_model: dict[str, list[dict[str, Any]]] = {}
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, "evaluate", ecfg.model_dump()):
        import mlflow

        for name, ref in models.items():
            path = ref if os.path.isdir(ref) else str(modeling.resolve_model(ref, mcfg.cache_dir))
            _log(f"[evaluate] {name}: {len(examples)} held-out prompts")
            metrics, rows = run_evaluate(path, examples, ecfg, mcfg, jcfg, model_name=name, log=_log)
            results[name] = metrics
            rows_by_model[name] = rows
            mlflow.log_metrics({f"{name}.{k}": v for k, v in metrics.items()})
        # every figure with its 95% interval; each model paired with MTL on the same examples
        summary = summarize(rows_by_model, reference="mtl", selection_judges=jcfg.judges)
        report = markdown_report(summary)
        lines = verdicts(summary) if summary.reference else []
        _log("[evaluate] comparison on the held-out split:\n" + report)
        _note(lines[-1] if lines else f"{len(results)} models x {len(examples)} held-out prompts")
        for out in (out_metrics, out_report):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out_metrics).write_text(json.dumps(results, indent=2))
        Path(out_report).write_text(report)
        all_rows = [r for rows in rows_by_model.values() for r in rows]
        write_jsonl(out_rows, all_rows)
        png = tradeoff_plot(summary)
        mlflow.log_text(report, "comparison.md")
        mlflow.log_dict(summary.to_dict(), "summary.json")
        mlflow.log_image(_png_image(png), "tradeoff.png")
        mlflow.log_text(html_report(summary, rows_by_model, examples=examples, plot_png=png), "report.html")
        mlflow.log_table({k: [r.get(k) for r in all_rows] for k in all_rows[0]}, artifact_file="eval_samples.json")
    return results


def _png_image(data: bytes):
    """PNG bytes as a PIL image (mlflow.log_image takes images, not bytes)."""
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def register(model_dir: str, metrics_path: str, register_cfg: Section, evaluate_cfg: Section, model_cfg: Section,
             tracking_cfg: Section, parent_run_id: str, *, candidate: str = "reset") -> dict[str, Any]:
    from reset.registry import log_and_register

    rcfg = C.section(C.RegisterConfig, dict(register_cfg or {}), "register")
    ecfg = C.section(C.EvaluateConfig, dict(evaluate_cfg or {}), "evaluate")
    mcfg = C.section(C.ModelConfig, dict(model_cfg or {}), "model")
    results = json.loads(Path(metrics_path).read_text())
    if candidate not in results:
        raise ValueError(f"{metrics_path}: no metrics for model {candidate!r} (have {sorted(results)})")
    with tracking.step_run(_tracking(tracking_cfg), parent_run_id, "register", rcfg.model_dump()):
        import mlflow

        decision = log_and_register(model_dir, results[candidate], rcfg, ecfg.max_new_tokens, mcfg.system_prompt)
        mlflow.log_metrics({f"{candidate}.{k}": v for k, v in results[candidate].items()})
        mlflow.log_metric("promoted", float(decision["promote"]))
        mlflow.set_tags({"registered_model": rcfg.model_name, "registered_version": decision["version"],
                         "promotion": decision["reason"]})
        verdict = "promoted to" if decision["promote"] else "NOT promoted to"
        _note(f"{rcfg.model_name} v{decision['version']} @{rcfg.challenger_alias}, {verdict} @{rcfg.champion_alias}")
        _log(f"[register] {rcfg.model_name} v{decision['version']} is @{rcfg.challenger_alias}; {verdict} "
             f"@{rcfg.champion_alias}: {decision['reason']}")
    return decision
