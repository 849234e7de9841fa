"""The pipeline's steps, one plain function each (reset/config/steps.py is their table): glue that
reads a step's input files, calls the library, writes its outputs and logs its MLflow step run.

Every step takes the typed config (`config(...)` builds it from what KFP passes: one dict per
section, validated at start-run) and local paths, so a step runs and debugs alone from Python:

    cfg = steps.config(judge={"judges": ["rules"]})
    steps.judge("seen.jsonl", "candidates.jsonl", cfg, out_judgments="judgments.jsonl")

The components (components/) are one call each to these; the parent MLflow run is found by the
KFP run id in the environment (reset.tracking), never passed in.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reset import config as configs
from reset import genai, preflight, progress, tracking
from reset.config import PipelineConfig
from reset.data import chunks
from reset.data.records import Candidate, Example, Judgment, read_jsonl, write_jsonl
from reset.data.storage import sha256_file

TEST_DIGEST_TAG = "reset.test_digest"  # the parent run's, the mix run's and the registered version's tag


def _log(msg: str) -> None:
    print(msg, flush=True)


def _note(text: str) -> None:
    """The one-line summary the CLI shows when the step ends."""
    progress.emit("note", text=text)


def _read(path: str, cls):
    rows, _ = read_jsonl(path, cls)  # step-to-step files are ours: any bad row is a bug, so fail
    return rows


def _read_rows(path: str) -> list[dict[str, Any]]:
    """Evaluation rows (JSONL of dicts, as `evaluate_answers` writes them)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_text(path: str, text: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------- the config
def config(sections_path: str = "", **sections: Mapping[str, Any] | None) -> PipelineConfig:
    """The typed config of one task: the sections KFP passed it (dicts), or the run's whole effective
    config from start-run's `sections` artifact, which a task inside a ParallelFor reads instead (a
    kfp.local bug replaces a loop's task-output parameters by the loop item: components/__init__.py)."""
    data: dict[str, Any] = read_sections(sections_path) if sections_path else {}
    data.update({k: dict(v) for k, v in sections.items() if v})
    return configs.validate(PipelineConfig, data)


def write_sections(path: str, sections: Mapping[str, Any]) -> None:
    """The effective config sections as one JSON file (start-run's `sections` artifact)."""
    _write_text(path, json.dumps(dict(sections), indent=2, sort_keys=True, default=str))


def read_sections(path: str) -> dict[str, Any]:
    """The sections `write_sections` wrote."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not the run's config sections (start-run's sections artifact): {exc}") from exc


# ------------------------------------------------------------------------------ the parent run
def start_run(sections: Mapping[str, Any], job_id: str, tags: Mapping[str, str] | None = None,
              out_sections: str = "") -> str:
    """Validate the whole config once (errors name the key), run the preflight where the local CLI
    did not, create the parent run of KFP job `job_id`, and write the effective sections."""
    cfg = configs.validate(PipelineConfig, dict(sections))
    if preflight.not_done_here():
        preflight.run(cfg, where="cluster")  # PreflightError: one line per problem, nothing started
    title = tracking.run_title("ReSet-S" if cfg.select.mode == "reset-s" else "ReSet", cfg.model.base,
                               cfg.data.train_size)
    tcfg = cfg.tracking.model_copy(update={"run_name": cfg.tracking.run_name or title})
    run_id = tracking.start_parent(tcfg, sections, {**(tags or {}), tracking.JOB_TAG: job_id})
    _log(f"[mlflow] parent run {run_id} at {tracking.resolve_uri(tcfg)} (experiment {tcfg.experiment!r})")
    if out_sections:
        write_sections(out_sections, sections)
    return run_id


def finish_run(cfg: PipelineConfig, job_id: str) -> str:
    """Close the parent run of pipeline job `job_id`; "NONE" when the job failed before creating it."""
    parent = tracking.find_parent(cfg.tracking, job_id)
    if parent is None:
        _log(f"[mlflow] no parent run for job {job_id}: the pipeline failed before it started")
        return "NONE"
    status = tracking.finish_parent(cfg.tracking, parent)
    _log(f"[mlflow] parent run {parent}: {status}")
    return status


# ----------------------------------------------------------------------------------------- mix
def mix(cfg: PipelineConfig, *, out_train: str, out_dev: str, out_test: str, out_seen: str, out_rejected: str,
        out_card: str = "", cache_dir: str = "") -> dict[str, Any]:
    """Read every data source (any published format; local, s3:// or hf://), mix, write the four
    splits, the quarantine and the data card (lengths in the base model's tokens)."""
    from reset.data import card as cards
    from reset.data.mix import mix_to_files
    from reset.models.tokenizers import length_meter

    with tracking.step_run(cfg.tracking, "mix", cfg.data.model_dump()) as run:
        import mlflow

        with progress.timed("model_load"):  # the base model's tokenizer
            meter = length_meter(cfg.model, cache_dir)
        _log(f"[mix] lengths in {meter.unit}: {meter.note}")
        with progress.timed("compute"):
            report = mix_to_files(cfg.data, out_train=out_train, out_dev=out_dev, out_test=out_test,
                                  out_seen=out_seen, out_rejected=out_rejected, meter=meter, cache_dir=cache_dir,
                                  title="mix")
        for rep in report.sources:
            _log(f"[mix] {rep.path}: {rep.format}, {rep.rows} rows, {rep.kept} examples kept, "
                 f"{sum(rep.rejected.values())} not kept {rep.rejected or ''}")
        stats, card = report.stats, report.card
        for r in report.quarantine.first[:10]:
            _log(f"[mix] rejected {r}")
        markdown = cards.to_markdown(card)
        _write_text(out_card, markdown)
        mlflow.log_metrics(tracking.numeric(stats))
        mlflow.log_metrics({tracking.metric_name(k): v for k, v in cards.flat_metrics(card).items()})
        mlflow.log_artifact(out_rejected, "quarantine")
        mlflow.log_text(markdown, "data_card/data_card.md")
        mlflow.log_text(cards.to_html(card), "data_card/data_card.html")
        mlflow.log_dict(card, "data_card/data_card.json")
        for rep in report.sources:
            for f in rep.files or [{"file": rep.path, "digest": "", "bytes": 0}]:
                tracking.log_input(tracking.dataset(f["file"], rep.name, f["digest"]), context="source",
                                   tags={"format": rep.format, "slot": rep.slot})
        for name, out in report.outputs.items():
            label = "seen_prompts" if name == "seen" else name
            tracking.log_input(tracking.dataset(out["path"], label, out["digest"]), context=label,
                               tags={"rows": str(out["rows"])})
        stats["test_digest"] = report.outputs["test"]["digest"]
        _log(f"[mix] test split: {stats['test']} rows, sha256 {stats['test_digest']} (frozen: read only by the "
             "final evaluation and the gate)")
        tracking.tag_with_parent(run, {TEST_DIGEST_TAG: stats["test_digest"]})
        _note(f"{stats['train']} train, {stats['dev']} dev, {stats['test']} test, {stats['seen_prompts']} seen "
              f"prompts, {stats['rejected']} rejected")
    return stats


# ------------------------------------------------------------------------------------ finetune
def finetune(start: str | None, train_path: str, cfg: PipelineConfig, *, stage: str, out_dir: str,
             section: str = "train", kinds: Sequence[str] = ()) -> dict[str, Any]:
    """Fine-tune with the `section` config (train, or continued_train for the continued arms):
    from `start` (None: model.base; else a model reference or the checkpoint it continues), on
    the examples of `train_path` (only those of `kinds` when given)."""
    from reset.models import loading
    from reset.models.finetune import finetune as run_finetune
    from reset.models.finetune import loss_check

    tcfg = getattr(cfg, section)
    if tcfg.checkpoint_dir and (later := re.fullmatch(r".+-r(\d+)", stage)):  # a later ReSet round: its own
        tcfg = tcfg.model_copy(update={"checkpoint_dir": f"{tcfg.checkpoint_dir.rstrip('/')}-r{later.group(1)}"})
    examples = _read(train_path, Example)
    if kinds:
        examples = [e for e in examples if e.kind in kinds]
        if not examples:
            raise ValueError(f"finetune-{stage}: {train_path} holds no {' / '.join(kinds)} examples")
    with tracking.step_run(cfg.tracking, f"finetune-{stage}",
                           {"stage": stage, section: tcfg.model_dump(), "model": cfg.model.model_dump()}):
        import mlflow

        start = start or cfg.model.base
        metrics = run_finetune(start, examples, out_dir, tcfg, cfg.model,
                               provenance={"stage": stage, "source_model": start, "train_examples": len(examples)},
                               log=_log, on_step=lambda step, loss: mlflow.log_metric("loss", loss, step=step))
        mlflow.log_metrics(tracking.numeric({k: v for k, v in metrics.items() if k != "loss_history"}))
        mlflow.log_dict(loading.read_provenance(out_dir), "provenance.json")
        tracking.log_input(tracking.dataset(train_path, "train" if section == "train" else "selected",
                                            sha256_file(train_path)), context="training")
        check = loss_check(metrics)
        mlflow.set_tag("reset.loss_check", check)
        _log(f"[finetune] loss check: {check}")
        _note(f"{metrics['steps']} steps on {metrics['examples']} examples, loss {metrics['first_loss']:.2f} -> "
              f"{metrics['final_loss']:.2f}, {metrics['tokens'] / max(metrics['seconds'], 1e-9):.0f} tokens/s")
    return metrics


# ------------------------------------------------------------------------------------ generate
def round_step(step: str, round_: int) -> str:
    """The name a step of ReSet round `round_` runs under: generate, then generate-r2, ..."""
    return step if round_ <= 1 else f"{step}-r{round_}"


def shard_step(step: str, shard: int, shards: int) -> str:
    """The name a shard of a step runs under (its MLflow run, its console line): generate-2of4."""
    return step if shards <= 1 else f"{step}-{shard + 1}of{shards}"


def generate(model_dir: str, seen_path: str, cfg: PipelineConfig, *, out_candidates: str, shard: int = 0,
             shards: int = 1, round_: int = 1) -> dict[str, Any]:
    """Sample candidates for the seen prompts (or for shard `shard` of `shards` contiguous pieces of
    them: the same candidates, with the same seeds, as the unsharded step gives those prompts);
    `round_` > 1: a later ReSet round (its step is named generate-r<round>)."""
    from reset.data.shards import bounds
    from reset.models.generation import sample_candidates

    examples = _read(seen_path, Example)
    lo, hi = bounds(len(examples), shard, shards)
    name = shard_step(round_step("generate", round_), shard, shards)
    with tracking.step_run(cfg.tracking, name, cfg.generate.model_dump()), chunks.session(name, _log) as resume:
        import mlflow

        if shards > 1:
            _log(f"[generate] shard {shard + 1} of {shards}: seen prompts {lo}..{hi - 1}")
        cands, stats = sample_candidates(model_dir, examples[lo:hi], cfg.generate, cfg.model, log=_log, offset=lo,
                                         resume=resume)
        write_jsonl(out_candidates, cands)
        mlflow.log_metrics(tracking.numeric(stats))
        mlflow.set_tags({"generate.backend": stats["backend"],
                         **({"generate.fallback_reason": stats["fallback_reason"]}
                            if "fallback_reason" in stats else {})})
        _note(
            f"{len(cands)} candidates for {hi - lo} prompts with {stats['backend']} "
            f"({stats['tokens_per_second']:.0f} tokens/s, engine start {stats['engine_start_seconds']:.0f}s)"
        )
    return {k: v for k, v in stats.items() if k != "fallback_reason"}


# --------------------------------------------------------------------------------------- judge
def judge(
    seen_path: str,
    candidates_path: str,
    cfg: PipelineConfig,
    *,
    out_judgments: str,
    cache_dir: str = "",
    shard: int = 0,
    shards: int = 1,
    round_: int = 1,
) -> dict[str, Any]:
    """Judge the candidates in `candidates_path` (a shard's, when generation was sharded: `shard`
    and `shards` only name the run, as `round_` does a later ReSet round's)."""
    from reset.judging.run import judge_all, judged_table

    examples = _read(seen_path, Example)
    cands = _read(candidates_path, Candidate)
    name = shard_step(round_step("judge", round_), shard, shards)
    with tracking.step_run(cfg.tracking, name, cfg.judge.model_dump()), chunks.session(name, _log) as resume:
        import mlflow

        _log(f"[judge] {len(cands)} candidates, judges: {', '.join(cfg.judge.judges)}")
        with progress.timed("compute"):
            judged = judge_all(examples, cands, cfg.judge, cache_dir, resume=resume)
        if judged.reused:
            _log(f"[judge] {judged.reused} judgments from chunks an earlier attempt finished")
        for ledger in judged.llm:
            mlflow.log_metrics({f"llm.{k}": v for k, v in tracking.numeric(ledger).items()})
            _log(f"[judge] LLM judge: {json.dumps(tracking.numeric(ledger))}")
        write_jsonl(out_judgments, judged.judgments)
        stats = judged.means()
        _log(f"[judge] {json.dumps({k: round(v, 4) for k, v in stats.items()})}")
        _note(f"{len(judged.judgments)} judged by {', '.join(judged.judges)}; mean score {stats['mean_combined']:.3f}")
        mlflow.log_metrics(tracking.numeric(stats))
        mlflow.log_table(
            judged_table(examples, cands, judged.judgments, judged.judges), artifact_file="judged_samples.json"
        )
    return stats


def gather(
    seen_path: str,
    candidate_paths: Sequence[str],
    judgment_paths: Sequence[str],
    *,
    out_candidates: str,
    out_judgments: str,
) -> dict[str, Any]:
    """The shards' candidates and judgments as one set each, in the unsharded step's order (seen
    prompt, then id); every seen prompt must have its candidates, none twice."""
    from reset.data.shards import ordered

    ids = [e.id for e in _read(seen_path, Example)]
    cands = ordered(
        [c for p in candidate_paths for c in _read(p, Candidate)], ids, lambda c: c.example_id, lambda c: c.id
    )
    judgments = ordered(
        [j for p in judgment_paths for j in _read(p, Judgment)], ids, lambda j: j.example_id, lambda j: j.candidate_id
    )
    missing = sorted(set(ids) - {c.example_id for c in cands})
    if missing:
        raise ValueError(
            f"no candidates for {len(missing)} seen prompts after gathering {len(candidate_paths)} "
            f"shards (first: {missing[0]!r})"
        )
    if {j.candidate_id for j in judgments} != {c.id for c in cands}:
        raise ValueError("the gathered judgments do not cover exactly the gathered candidates")
    write_jsonl(out_candidates, cands)
    write_jsonl(out_judgments, judgments)
    _log(f"[gather] {len(candidate_paths)} shards: {len(cands)} candidates, {len(judgments)} judgments")
    return {"shards": len(candidate_paths), "candidates": len(cands), "judgments": len(judgments)}


# -------------------------------------------------------------------------------------- select
def select(
    seen_path: str,
    candidates_path: str,
    judgments_path: str,
    cfg: PipelineConfig,
    *,
    out_selected: str,
    out_report: str = "",
    own_plan: bool = False,
    name: str = "select",
    out_card: str = "",
    out_pairs: str = "",
    round_: int = 1,
) -> dict[str, Any]:
    """Reject sampling over the judged candidates (ReSet round `round_`: its threshold); with
    `own_plan`, only over those that generate's config would have sampled (an arm that shares a
    larger generation, the experiment's ReSet); `out_pairs`: the preference pairs as well."""
    from reset.selection import by_kind, judged_table, sampled_by
    from reset.selection import select as run_select

    examples = _read(seen_path, Example)
    cands = _read(candidates_path, Candidate)
    judgments = _read(judgments_path, Judgment)
    if own_plan:
        mine = sampled_by(cands, cfg.generate)
        _log(f"[select] {len(mine)} of the {len(cands)} shared candidates are this arm's sampling plan")
        ids = {c.id for c in mine}
        cands, judgments = mine, [j for j in judgments if j.candidate_id in ids]
    with tracking.step_run(cfg.tracking, name, cfg.select.model_dump()) as run:
        import mlflow

        with progress.timed("compute"):
            sel = run_select(examples, cands, judgments, cfg.select, round_)
        write_jsonl(out_selected, sel.examples)
        rep = sel.report
        if out_pairs:
            rep["preference_pairs"] = _preference_pairs(examples, cands, judgments, cfg, sel, out_pairs)
        ranks = rep.pop("ranks", {})
        for line in keep_rate_lines(rep):
            _log(f"[select] {line}")
        mlflow.log_metrics({tracking.metric_name(k): v for k, v in keep_rate_metrics(rep).items()})
        mlflow.log_metrics(tracking.numeric(rep))
        mlflow.log_dict(rep, "selection_report.json")
        _write_text(out_report, json.dumps(rep, indent=2, default=str))  # the keep rates, for evaluate's report
        mlflow.log_table(judged_table(examples, cands, judgments, ranks), artifact_file="judged_samples.json")
        genai.dataset_card_for(run, out_selected, cands, judgments, rep, cfg, out_card)  # tag synthetic, keep rates
        kinds = ", ".join(f"{k} {g['kept']}/{g['prompts']}" for k, g in by_kind(rep).items())
        _note(f"kept {rep['selected']}/{rep['prompts']} prompts ({kinds}), mean score {rep['mean_selected_score']:.3f}")
    return rep


def _preference_pairs(examples, cands, judgments, cfg: PipelineConfig, sel, out_path: str) -> dict[str, Any]:
    """The judged candidates as a preference data set in TRL's format (reset.selection): the file,
    an MLflow dataset input and artifact, the counts as metrics."""
    import mlflow

    from reset.models.chat import messages
    from reset.selection import preference_pairs

    rows, counts = preference_pairs(examples, cands, judgments, cfg.select, sel,
                                    lambda e: messages(e, cfg.model.system_prompt))
    write_jsonl(out_path, rows)
    tracking.log_input(tracking.dataset(out_path, "preference_pairs", sha256_file(out_path)), context="preference",
                       tags={"rows": str(len(rows)), "format": "trl-preference (prompt, chosen, rejected)"})
    mlflow.log_artifact(out_path, "preference_pairs")
    mlflow.log_metrics({f"pairs.{k}": v for k, v in tracking.numeric(counts).items()})
    _log(f"[select] {counts['pairs']} preference pairs (chosen: the selected answer; rejected: the lowest-scoring "
         f"answer that failed a gate or the threshold), mean margin {counts['mean_margin']:.3f}; "
         f"{counts['without_rejected']} selected prompts had no rejected answer")
    return counts


def keep_rate_lines(rep: Mapping[str, Any]) -> list[str]:
    """The selection report in lines: the keep rate overall, per group, task, family and gate."""
    lines = [
        f"mode {rep['mode']}: kept {rep['selected']}/{rep['prompts']} prompts (keep rate "
        f"{rep['keep_rate']:.2f}, mean score {rep['mean_selected_score']:.3f})"
    ]
    lines += [f"  {g}: {v['kept']}/{v['prompts']} kept" for g, v in rep["per_group"].items()]
    lines += [f"  task {t}: {v['kept']}/{v['prompts']} kept" for t, v in rep["per_task"].items()]
    lines += [f"  constraint family {f}: {v['kept']}/{v['prompts']} kept" for f, v in rep.get("per_family", {}).items()]
    lines += [f"  gate {g}: {n} candidates failed it" for g, n in rep.get("gated_out", {}).items()]
    return lines


def keep_rate_metrics(rep: Mapping[str, Any]) -> dict[str, float]:
    out = {f"keep_rate.{g.replace('/', '.')}": v["keep_rate"] for g, v in rep["per_group"].items()}
    out.update({f"keep_rate.task.{t}": v["keep_rate"] for t, v in rep["per_task"].items()})
    out.update({f"keep_rate.family.{f}": v["keep_rate"] for f, v in rep.get("per_family", {}).items()})
    out.update({f"gated_out.{g}": n for g, n in rep.get("gated_out", {}).items()})
    return out


# ------------------------------------------------------------------------------------ evaluate
def _models_to_evaluate(
    models: Mapping[str, str], cfg: PipelineConfig, with_register: bool, include_base: bool, tmp: str
) -> tuple[dict[str, str], str | None]:
    """The configured base model ("base"), `models`, and the registry's current champion
    ("champion", downloaded under `tmp`) when register.compare_champion: (models, its version)."""
    from reset.registry import champion_checkpoint

    models = {"base": cfg.model.base, **models} if include_base else dict(models)
    found = champion_checkpoint(cfg.register, tmp) if with_register and cfg.register.compare_champion else None
    if found:
        models["champion"] = str(found[1])
        _log(f"[evaluate] also re-scoring the current champion, {cfg.register.model_name} v{found[0]}")
    return models, found[0] if found else None


def split_path(cfg: PipelineConfig, test_path: str, dev_path: str = "") -> str:
    """The held-out file evaluate.split names (dev needs the mix step's dev split)."""
    if cfg.evaluate.split == "dev":
        if not dev_path or not Path(dev_path).exists() or not Path(dev_path).stat().st_size:
            raise configs.ConfigError(
                "evaluate.split: dev, but the mix step wrote no dev split (data.dev_per_kind: 0?)"
            )
        return dev_path
    return test_path


def evaluate_answers(
    models: Mapping[str, str],
    test_path: str,
    cfg: PipelineConfig,
    *,
    out_rows: str,
    with_register: bool = False,
    include_base: bool = True,
    shard: int = 0,
    shards: int = 1,
    dev_path: str = "",
) -> dict[str, Any]:
    """One shard of the evaluation: every model's greedy answers to shard `shard` of `shards`
    contiguous pieces of the held-out split, scored, one row per (model, example) to `out_rows`
    (the champion's rows carry its registry version). `evaluate(..., rows_paths=...)` gathers them."""
    from reset.data.shards import bounds
    from reset.evaluation import evaluate_models

    examples = _read(split_path(cfg, test_path, dev_path), Example)
    lo, hi = bounds(len(examples), shard, shards)
    name = shard_step("answer", shard, shards)
    with (
        tracking.step_run(cfg.tracking, name, cfg.evaluate.model_dump()),
        tempfile.TemporaryDirectory(prefix="reset-champion-") as tmp,
        chunks.session(name, _log) as resume,
    ):
        import mlflow

        models, champion = _models_to_evaluate(models, cfg, with_register, include_base, tmp)
        _log(
            f"[evaluate] shard {shard + 1} of {shards}: {len(models)} models ({', '.join(models)}) x held-out "
            f"prompts {lo}..{hi - 1}"
        )
        rows_by_model, _, gen_stats = evaluate_models(
            models, examples[lo:hi], cfg.evaluate, cfg.model, cfg.judge, log=_log, offset=lo, resume=resume
        )
        rows = [
            {**r, **({"registry_version": champion} if name == "champion" else {})}
            for name, model_rows in rows_by_model.items()
            for r in model_rows
        ]
        write_jsonl(out_rows, rows)
        first = next(iter(gen_stats.values()), {})
        mlflow.log_metrics(
            tracking.numeric(
                {"rows": len(rows), "prompts": hi - lo, "tokens_per_second": first.get("tokens_per_s", 0.0)}
            )
        )
        _note(f"{len(rows)} answers of {len(models)} models to {hi - lo} held-out prompts")
    return {"rows": len(rows), "models": list(models), "prompts": hi - lo}


def evaluate(
    models: Mapping[str, str],
    test_path: str,
    cfg: PipelineConfig,
    *,
    out_metrics: str,
    out_report: str,
    out_rows: str,
    out_html: str = "",
    with_register: bool = False,
    include_base: bool = True,
    reference: str = "mtl",
    candidate: str = "reset",
    seed: int | None = None,
    rows_paths: Sequence[str] = (),
    dev_path: str = "",
    keep_rates_paths: Mapping[str, str] | None = None,
    extra_rows_paths: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate `models` (name -> checkpoint, e.g. mtl, reset), the base model (`include_base`) and
    the registry's champion (register.compare_champion, `with_register`) on the held-out split
    evaluate.split names, and decide (reset.evaluation.decision): every figure with its interval,
    `candidate` gated against `reference` and the champion; on the test split of a pipeline that
    registers, this use of the split is counted in the registry first (the gate's alpha spending).
    `rows_paths`: the answers of `evaluate_answers` shards, gathered instead of generating;
    `extra_rows_paths`: model -> rows scored once elsewhere (the experiment's base model);
    `keep_rates_paths`: arm -> its select step's report. Writes the payload (`out_metrics`), the
    Markdown and HTML reports and the rows; logs one MLflow run per model and the headline on the
    parent run."""
    path = split_path(cfg, test_path, dev_path)
    examples = _read(path, Example)
    digest = sha256_file(path)
    with (
        tracking.step_run(cfg.tracking, "evaluate", cfg.evaluate.model_dump()) as run,
        tempfile.TemporaryDirectory(prefix="reset-champion-") as tmp,
        chunks.session("evaluate", _log) as resume,
    ):
        import mlflow

        tracking.log_input(tracking.dataset(path, cfg.evaluate.split, digest), context="evaluation")
        mlflow.set_tags({"reset.split": cfg.evaluate.split, f"reset.{cfg.evaluate.split}_digest": digest})
        rows_by_model, results, gen_stats, models, champion = _answers(
            models, examples, cfg, rows_paths=rows_paths, extra_rows_paths=extra_rows_paths,
            with_register=with_register, include_base=include_base, tmp=tmp, resume=resume)
        use = _count_test_use(cfg, digest, with_register and candidate in rows_by_model)
        payload = _decide_and_report(
            cfg, models, rows_by_model, examples, reference=reference, candidate=candidate, use=use,
            champion=champion, keep_rates=_keep_rates(keep_rates_paths), out_report=out_report, out_html=out_html,
            parent=run.data.tags.get("mlflow.parentRunId", ""),
        )
        payload.update({"seed": seed, "metrics": results, "split_digest": digest, "generation": gen_stats})
        _write_text(out_metrics, json.dumps(payload, indent=2, default=str))
        write_jsonl(out_rows, [r for rows in rows_by_model.values() for r in rows])
        mlflow.log_metrics(tracking.numeric({f"{name}.{k}": v for name, m in results.items() for k, v in m.items()}))
        # one evaluation run per model (same keys: the compare views line them up), a trace per example
        genai.log_evaluation(cfg, rows_by_model, results, examples, digest=digest, payload=payload, step_run=run)
    return payload


def _answers(models, examples, cfg: PipelineConfig, *, rows_paths, extra_rows_paths, with_register: bool,
             include_base: bool, tmp: str, resume) -> tuple[dict, dict, dict, Mapping[str, str], str | None]:
    """The evaluation rows of every model: gathered from answer shards (`rows_paths`), or answered
    here (the base model, `models`, the champion), plus rows scored once elsewhere on this split
    (`extra_rows_paths`). Returns (rows by model, point metrics, generation stats, models, champion)."""
    from reset.evaluation import evaluate_models, point_metrics
    from reset.evaluation.runner import gather_rows

    if rows_paths:
        rows_by_model, champion = gather_rows([_read_rows(p) for p in rows_paths], examples)
        results, gen_stats = {m: point_metrics(rs) for m, rs in rows_by_model.items()}, {}
        _log(f"[evaluate] gathered {len(rows_paths)} shards: {len(rows_by_model)} models x {len(examples)} prompts")
    else:
        evaluated, champion = _models_to_evaluate(models, cfg, with_register, include_base, tmp)
        _log(f"[evaluate] {len(evaluated)} models ({', '.join(evaluated)}) x {len(examples)} "
             f"{cfg.evaluate.split} prompts")
        rows_by_model, results, gen_stats = evaluate_models(
            evaluated, examples, cfg.evaluate, cfg.model, cfg.judge, log=_log, resume=resume
        )
        models = evaluated
    for name, extra in (extra_rows_paths or {}).items():  # scored once elsewhere, on this same split
        rows = _read_rows(extra)
        if {r["example_id"] for r in rows} != {e.id for e in examples}:
            raise ValueError(f"{extra}: the {name} rows are not this {cfg.evaluate.split} split's")
        rows_by_model, results = {name: rows, **rows_by_model}, {name: point_metrics(rows), **results}
    return rows_by_model, results, gen_stats, models, champion


def _decide_and_report(
    cfg: PipelineConfig,
    models: Mapping[str, str],
    rows_by_model,
    examples,
    *,
    reference: str,
    candidate: str,
    use: int,
    champion: str | None,
    keep_rates,
    out_report: str,
    out_html: str,
    parent: str,
) -> dict[str, Any]:
    """The decision and every report of it: the step's files and MLflow artifacts, the parent's headline."""
    from reset.evaluation import markdown_report
    from reset.evaluation.decision import rules_from_config, run_decision
    from reset.evaluation.html import html_report
    from reset.evaluation.plot import tradeoff_plot
    from reset.evaluation.report import HEADLINE
    from reset.evaluation.summary import flat_metrics, unit_values

    same = {ref: _same_weights(models.get(candidate), models.get(ref)) for ref in (reference, "champion")}
    decision = run_decision(
        rows_by_model, reference=reference, candidate=candidate, rules=rules_from_config(cfg.register, use),
        selection_judges=cfg.judge.judges, same_weights=same,
        labels={"champion": f"champion v{champion}"} if champion else None, split=cfg.evaluate.split,
    )
    summary, lines = decision.summary, decision.lines
    gate_lines = [f"Gate: {decision.words()}"] if decision.gates else []
    if decision.gates:
        _log(f"[evaluate] decision on the {cfg.evaluate.split} split (use {use}): {decision.words()}")
    report = markdown_report(
        summary,
        keep_rates=keep_rates,
        extra=[f"Against the current champion: {x}" for x in lines if "vs champion" in x] + gate_lines,
    )
    _log(f"[evaluate] comparison on the {cfg.evaluate.split} split:\n" + report)
    _note(lines[0] if lines else f"{len(rows_by_model)} models x {len(examples)} {cfg.evaluate.split} prompts")
    png = tradeoff_plot(summary)
    html = html_report(summary, rows_by_model, examples=examples, plot_png=png, keep_rates=keep_rates)
    _write_text(out_report, report)
    _write_text(out_html, html)
    payload = {
        **decision.to_dict(),
        "champion_version": champion,
        "summary": summary.to_dict(),
        "units": unit_values(summary, rows_by_model),
        "intervals": flat_metrics(summary, keys=HEADLINE),  # the axes' intervals, paired differences and p
    }
    _publish(summary, decision, lines, payload, rows_by_model, report=report, html=html, png=png, parent=parent)
    return payload


def _publish(summary, decision, lines: list[str], payload: Mapping[str, Any], rows_by_model, *, report: str,
             html: str, png: bytes, parent: str) -> None:
    """The evaluate step's MLflow artifacts, and the headline on the parent run: each arm on both
    axes, each against MTL, the verdict and the decision."""
    import mlflow

    from reset.evaluation.report import HEADLINE, headline_text
    from reset.evaluation.summary import flat_metrics

    all_rows = [r for rows in rows_by_model.values() for r in rows]
    mlflow.log_text(report, "comparison.md")
    mlflow.log_dict(payload["summary"], "summary.json")
    mlflow.log_dict(decision.to_dict(), "decision.json")
    mlflow.log_image(tracking.png_image(png), "tradeoff.png")
    mlflow.log_text(html, "report.html")
    mlflow.log_table({k: [r.get(k) for r in all_rows] for k in all_rows[0]}, artifact_file="eval_samples.json")
    if parent:
        headline = headline_text(summary, lines + [f"Decision: {decision.words()}"] if decision.gates else lines)
        tracking.log_on_parent(
            parent,
            metrics=flat_metrics(summary, keys=HEADLINE),
            tags={"reset.verdict": lines[0] if lines else "", "reset.decision": decision.words()[:5000]},
            texts={"headline.md": headline, "comparison.md": report, "report.html": html},
            images={"tradeoff.png": png},
        )


def _keep_rates(paths: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The select steps' reports by arm (one arm: its report alone), for the keep-rate tables."""
    reports = {arm: json.loads(Path(p).read_text()) for arm, p in (paths or {}).items() if p and Path(p).exists()}
    if not reports:
        return None
    return next(iter(reports.values())) if len(reports) == 1 else reports


def _count_test_use(cfg: PipelineConfig, digest: str, registering: bool) -> int:
    """This evaluation's use number of the test split against the registered model (counted in the
    registry: the gate's alpha spending); 1 where nothing is counted (no registry, dev)."""
    if not registering or cfg.evaluate.split != "test":
        return 1
    from reset.registry import reserve_test_use

    use = reserve_test_use(cfg.register, digest, holder=f"evaluate {tracking.job_id('local')}")
    if use > 1:
        _log(
            f"[evaluate] use {use} of this test split against {cfg.register.model_name} (sha256 {digest[:12]}): "
            "the gate spends alpha over uses"
        )
    return use


def _same_weights(a: str | None, b: str | None) -> bool:
    from reset.models.loading import weights_digest

    if not a or not b:
        return False
    da, db = weights_digest(a), weights_digest(b)
    return da is not None and da == db


def pick_round(rounds: Mapping[int, str], dev_path: str, cfg: PipelineConfig, *, out_checkpoint: str,
               out_report: str = "") -> dict[str, Any]:
    """ReSet rounds (round -> checkpoint) scored on the dev split from one engine; the best by dev
    (reset.evaluation.rounds) is copied to `out_checkpoint`: the ReSet model. Each round's dev
    figures on this step's MLflow run (round_<k>.<metric>), the pick on the parent."""
    import shutil

    from reset.evaluation import evaluate_models
    from reset.evaluation.rounds import best_round, rounds_table

    if not dev_path or not Path(dev_path).exists() or not Path(dev_path).stat().st_size:
        raise configs.ConfigError(f"select.rounds: {len(rounds)} rounds are picked on the dev split, but the mix "
                                  "step wrote none (data.dev_per_kind: 0?)")
    examples = _read(dev_path, Example)
    with (
        tracking.step_run(cfg.tracking, "pick-round", {"rounds": len(rounds)}) as run,
        chunks.session("pick-round", _log) as resume,
    ):
        import mlflow

        models = {f"round-{k}": path for k, path in sorted(rounds.items())}
        _, results, _ = evaluate_models(models, examples, cfg.evaluate, cfg.model, cfg.judge, log=_log, resume=resume)
        by_round = {k: results[f"round-{k}"] for k in sorted(rounds)}
        best, scores = best_round(by_round)
        shutil.copytree(rounds[best], out_checkpoint, dirs_exist_ok=True)
        table = rounds_table(by_round, best)
        _write_text(out_report, table)
        mlflow.log_metrics(tracking.numeric({f"round_{k}.{m}": v for k, ms in by_round.items() for m, v in ms.items()}))
        mlflow.log_metrics({f"round_{k}.dev_score": v for k, v in scores.items()} | {"best_round": best})
        mlflow.log_text(table, "rounds.md")
        if parent := run.data.tags.get("mlflow.parentRunId", ""):
            tracking.log_on_parent(parent, tags={"reset.best_round": str(best)}, texts={"rounds.md": table})
        _log(f"[pick-round] {len(rounds)} rounds on {len(examples)} dev prompts:\n{table}")
        _note(f"round {best} of {len(rounds)} is the ReSet model (dev score {scores[best]:.3f}; "
              + ", ".join(f"round {k} {v:.3f}" for k, v in scores.items()) + ")")
    return {"best_round": best, "dev_scores": {str(k): v for k, v in scores.items()}}


# ------------------------------------------------------------------------------------ register
def register(model_dir: str, metrics_path: str, cfg: PipelineConfig, *, candidate: str = "reset") -> dict[str, Any]:
    """Register the candidate as challenger; champion only when the evaluate step's gates passed on
    the test split (a run evaluated on dev never promotes)."""
    from reset.registry import UNKNOWN, log_and_register

    rcfg = cfg.register
    payload = json.loads(Path(metrics_path).read_text())
    results = payload.get("metrics", payload)
    if candidate not in results:
        raise ValueError(f"{metrics_path}: no metrics for model {candidate!r} (have {sorted(results)})")
    gates, why_not, description, tags = _registration_facts(payload)
    # the champion the gates compared against: the alias moves only if it still points there
    evaluated = payload.get("champion_version") if gates is not None and rcfg.compare_champion else UNKNOWN
    with tracking.step_run(cfg.tracking, "register", rcfg.model_dump()) as run:
        import mlflow

        decision = log_and_register(
            model_dir,
            results[candidate],
            rcfg,
            cfg.evaluate.max_new_tokens,
            cfg.model.system_prompt,
            gates=gates,
            description=description,
            evaluated_champion=evaluated,
            version_tags={k: v for k, v in tags.items() if v},
            no_gate_reason=why_not,
            card=genai.model_card_for(run, model_dir, payload, cfg, candidate),
        )
        mlflow.log_metrics(tracking.numeric({f"{candidate}.{k}": v for k, v in results[candidate].items()}))
        mlflow.log_metric("promoted", int(decision["promote"]))
        mlflow.set_tags({"registered_model": rcfg.model_name, "registered_version": decision["version"],
                         "promotion": decision["reason"]})
        verdict = "promoted to" if decision["promote"] else "NOT promoted to"
        _note(f"{rcfg.model_name} v{decision['version']} @{rcfg.challenger_alias}: {decision['reason']}")
        _log(
            f"[register] {rcfg.model_name} v{decision['version']} is @{rcfg.challenger_alias}; {verdict} "
            f"@{rcfg.champion_alias}: {decision['reason']}"
        )
    return decision


def _registration_facts(payload: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str, str, dict[str, str]]:
    """From the evaluate step's payload: the gates (only a test-split evaluation has them to act
    on), why there is no gate otherwise, the version's description and its tags."""
    from reset.evaluation import GateDecision

    split = payload.get("split", "test")
    gates = (
        {ref: GateDecision.from_dict(g) for ref, g in payload["gates"].items()}
        if payload.get("gates") and split == "test"
        else None
    )
    why_not = ""
    if gates is None:
        why_not = ("evaluated on the dev split (evaluate.split: dev): a tuning run never promotes" if split == "dev"
                   else "no paired evaluation to gate on")
    description = "\n".join(
        payload.get("verdicts", []) + ([f"Decision: {payload['decision']}"] if payload.get("decision") else [])
    )
    tags = {
        TEST_DIGEST_TAG if split == "test" else "reset.dev_digest": payload.get("split_digest", ""),
        "reset.test_use": str(payload.get("test_use", "")),
        "reset.decision": payload.get("decision", "")[:5000],
    }
    return gates, why_not, description, tags


# ---------------------------------------------------------------------------------- experiment
def control_set(selected_path: str, seen_path: str, *, out_path: str) -> int:
    """The experiment's control data: the reference answers of the prompts ReSet kept."""
    from reset.experiments.arms import control_examples

    rows = control_examples(_read(selected_path, Example), _read(seen_path, Example))
    write_jsonl(out_path, rows)
    _log(f"[control] {len(rows)} reference answers of the prompts ReSet kept")
    return len(rows)


def experiment_report(
    payload_paths: Sequence[str], cfg: PipelineConfig, *, out_report: str, out_json: str = ""
) -> dict[str, Any]:
    """Across seeds: the pooled comparisons (reset.experiments.report) of every evaluate payload (one
    per seed, or two where the trade-off arms had their own), logged on the parent run (found by the
    KFP run id) as experiment.md / experiment.json."""
    from reset.experiments.report import by_seed, seed_report

    report, data = seed_report(by_seed([json.loads(Path(p).read_text()) for p in payload_paths]))
    _write_text(out_report, report)
    _write_text(out_json, json.dumps(data, indent=2))
    parent = tracking.find_parent(cfg.tracking, tracking.job_id()) if tracking.job_id() else None
    if parent:
        tracking.log_on_parent(parent, texts={"experiment.md": report, "experiment.json": json.dumps(data, indent=2)})
    _log("[experiment] across seeds:\n" + report)
    return data
