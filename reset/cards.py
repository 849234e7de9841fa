"""Hugging Face cards: the model card (README.md beside the weights of every exported model) and
the dataset card of the selected (model-generated) set.

    model_card(model_name=..., provenance=read_provenance(model_dir), evaluation=payload,
               candidate="reset", context={"config": ..., "data_card": ...}) -> str
    dataset_card(selected, candidates, judgments, report, select=cfg.select, generate=cfg.generate,
                 context=...) -> str
    front_matter(text) -> dict                # the YAML header back, for checks

A model card's YAML header follows the Hub's model card metadata: base_model (the Hub id of a
built-in, else the reference as configured), base_model_relation, library_name, pipeline_tag,
tags, datasets (the data sources: Hub ids for hf:// sources, else their names) and model-index:
one result per axis of the paper on the test split (its SHA-256 as the dataset revision), each
metric with its value and, in `args`, its 95% interval, n, and the paired difference against MTL
with its interval and p. The body has the same figures as a table, the verdict and the gate's
decision in words, the method and its configuration, the data sources with their digests, and the
limitations. Without an evaluation (a model exported outside the pipeline) the card says so and
holds no results. The dataset card is tagged `synthetic` and names the generating model, the
decoding grid, the judges, the selection's mode, threshold and gates, the keep rates, and the
pipeline's config.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

# Hub ids of the built-in models (reset.models.loading).
HUB_IDS = {"builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# The figures the model card reports, the paper's two axes first.
CARD_METRICS = (
    ("if_prompt_acc", "Instruction following", "IF prompt accuracy, IFEval strict"),
    ("faithfulness", "Faithfulness", "Faithfulness: the judges' score, 0 for a wrong extractive answer"),
    ("if_instruction_acc", "Instruction following", "IF instruction accuracy, IFEval strict"),
    ("if_prompt_loose", "Instruction following", "IF prompt accuracy, IFEval loose"),
    ("answer_correct", "Faithfulness", "Answer correct, extractive"),
    ("counterfactual_rate", "Faithfulness", "Counterfactual passages answered from the passage"),
    ("answer_f1", "Faithfulness", "Answer F1 vs reference, extractive"),
    ("rouge_l_abstractive", "Faithfulness", "ROUGE-L vs reference, abstractive"),
)
LIMITATIONS = [
    "Evaluated on one held-out test split of the configured sources; the figures say nothing about other "
    "tasks, languages or domains.",
    "IFEval-style instructions are checked by rules (strict and loose); faithfulness by the configured judges, "
    "which a copied passage can game (hence the gated faithfulness and answer correctness).",
    "A metric that shares its measure with a judge that selected the training data is partly the selection's "
    "own yardstick (the report marks them).",
    "One training run (seed) per registered model: the gate's intervals count prompts, not the variation "
    "between training runs (the experiment pipeline pools seeds).",
    "Generated (synthetic) training data: the model's own samples, kept by automatic judges; their errors "
    "can be reinforced.",
]


def front_matter(text: str) -> dict[str, Any]:
    """The YAML header of a card (between the leading '---' lines)."""
    if not text.startswith("---\n"):
        return {}
    head, sep, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head) or {} if sep else {}


def _header(meta: Mapping[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def hub_id(ref: str) -> str:
    """A model reference as the Hub names it where known (builtin:smollm2-135m-instruct ->
    HuggingFaceTB/SmolLM2-135M-Instruct); else the reference itself."""
    return HUB_IDS.get(ref, ref)


def _dataset_ids(context: Mapping[str, Any]) -> list[str]:
    out = []
    for s in (context.get("data_card") or {}).get("sources", []):
        path = str(s.get("path") or "")
        if path.startswith("hf://datasets/"):
            repo = path.removeprefix("hf://datasets/").split("@", 1)[0]
            out.append("/".join(repo.split("/")[:2]))
        else:
            out.append(str(s.get("name") or path))
    return list(dict.fromkeys(x for x in out if x))


def _sources_table(context: Mapping[str, Any]) -> list[str]:
    srcs = (context.get("data_card") or {}).get("sources", [])
    if not srcs:
        return ["The data card of the mix step was not found for this model."]
    lines = ["| source | slot | format | file | sha256 | rows read | kept |", "|---|---|---|---|---|---:|---:|"]
    for s in srcs:
        files = s.get("files") or [{"file": s.get("path", ""), "digest": ""}]
        for f in files:
            lines.append(f"| {s.get('name', '')} | {s.get('slot', '')} | {s.get('format', '')} | {f.get('file', '')} | "
                         f"`{str(f.get('digest', ''))[:16]}` | {s.get('rows', '')} | {s.get('kept', '')} |")
    return lines


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "n/a"


def results(evaluation: Mapping[str, Any], candidate: str) -> list[dict[str, Any]]:
    """The card's figures of `candidate`: one dict per reported metric present in the evaluation
    (key, task, name, value, low, high, n, and vs the reference: diff, diff_low, diff_high, p)."""
    summary = evaluation.get("summary") or {}
    est = (summary.get("estimates") or {}).get(candidate) or {}
    comp = (summary.get("comparisons") or {}).get(candidate) or {}
    out = []
    for key, task, name in CARD_METRICS:
        e = est.get(key)
        if not e or not e.get("n"):
            continue
        row = {"key": key, "task": task, "name": name, "value": e["value"], "low": e["low"], "high": e["high"],
               "n": e["n"]}
        t = comp.get(key)
        if t and t.get("n"):
            row.update(diff=t["diff"], diff_low=t["low"], diff_high=t["high"], p=t["p_value"])
        out.append(row)
    return out


def model_card(*, model_name: str, provenance: Mapping[str, Any], evaluation: Mapping[str, Any] | None = None,
               candidate: str = "reset", context: Mapping[str, Any] | None = None, run_id: str = "") -> str:
    """The README.md of an exported model (see the module docstring)."""
    evaluation = evaluation or {}
    context = context or {}
    config = context.get("config") or {}
    base = str(provenance.get("base_model") or (config.get("model") or {}).get("base") or "")
    ref = (evaluation.get("summary") or {}).get("reference") or "mtl"
    rows = results(evaluation, candidate)
    split = evaluation.get("split", "test")
    digest = str(evaluation.get("split_digest", ""))
    index_results = []
    for task in dict.fromkeys(r["task"] for r in rows):
        metrics = []
        for r in (x for x in rows if x["task"] == task):
            args = {"confidence": 0.95, "ci_low": round(r["low"], 4), "ci_high": round(r["high"], 4), "n": r["n"]}
            if "diff" in r:
                args.update({f"vs_{ref}_diff": round(r["diff"], 4), f"vs_{ref}_ci_low": round(r["diff_low"], 4),
                             f"vs_{ref}_ci_high": round(r["diff_high"], 4), f"vs_{ref}_p": round(r["p"], 4)})
            metrics.append({"type": r["key"], "value": round(r["value"], 4),
                            "name": f"{r['name']} (95% CI {r['low']:.3f}-{r['high']:.3f}, n={r['n']})",
                            "args": args, "verified": False})
        index_results.append({"task": {"type": "text-generation", "name": task},
                              "dataset": {"name": f"ReSet {split} split", "type": f"reset-{split}", "split": split,
                                          "revision": digest[:16]},
                              "metrics": metrics})
    meta: dict[str, Any] = {
        "base_model": hub_id(base) if base else None,
        "base_model_relation": "finetune",
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["reset", "rejection-sampling", "self-instruct", "instruction-following", "faithfulness",
                 "mlflow", "kubeflow-pipelines"] + (["lora"] if provenance.get("method") == "lora" else []),
        "datasets": _dataset_ids(context) or None,
    }
    if index_results:
        meta["model-index"] = [{"name": model_name, "results": index_results}]
    meta = {k: v for k, v in meta.items() if v is not None}
    lines = [f"# {model_name}", "",
             "A model fine-tuned with ReSet (\"Dancing in Chains\", Wu et al., EMNLP 2024): supervised fine-tuning "
             "on a mixture of instruction-following and context-dependent data (MTL), then continued fine-tuning "
             "on the best of its own sampled answers to seen prompts, as judged on instruction following, "
             "faithfulness and task quality (reject sampling).", ""]
    lines += [f"- Base model: `{base or 'unknown'}`" + (f" ({hub_id(base)})" if hub_id(base) != base else ""),
              f"- Stage: {provenance.get('stage', 'n/a')}; trained on {provenance.get('train_examples', 'n/a')} "
              "examples", *([f"- MLflow run: `{run_id}`"] if run_id else [])]
    lines += ["", "## Evaluation", ""]
    if rows:
        lines += [f"On the frozen {split} split (sha256 `{digest}`, use {evaluation.get('test_use', 1)} of it "
                  f"against the registered model); 95% intervals (Wilson / bootstrap), paired with "
                  f"{(evaluation.get('summary') or {}).get('labels', {}).get(ref, ref)} on the same examples "
                  "(McNemar's score test with Tango's interval for rates, the paired t for means).", "",
                  f"| metric | value | 95% interval | n | vs {ref} | 95% interval | p |",
                  "|---|---:|---|---:|---:|---|---:|"]
        for r in rows:
            vs = (f"{r['diff']:+.3f} | [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}] | {r['p']:.3g}" if "diff" in r
                  else "| |")
            lines.append(f"| {r['name']} | {r['value']:.3f} | [{r['low']:.3f}, {r['high']:.3f}] | {r['n']} | {vs} |")
        lines += [""]
        lines += [f"- {v}" for v in evaluation.get("verdicts", [])]
        if evaluation.get("decision"):
            lines += [f"- Decision: {evaluation['decision']}"]
    else:
        lines += ["This model was exported without a paired evaluation on a test split: no results are claimed."]
    lines += ["", "## Training", ""]
    for section in ("train", "generate", "judge", "select", "continued_train"):
        if config.get(section):
            lines += [f"`{section}`:", "", "```yaml", yaml.safe_dump(config[section], sort_keys=True).rstrip(),
                      "```", ""]
    if not config:
        lines += ["The pipeline's configuration was not found; the checkpoint's provenance:", "", "```json",
                  json.dumps({k: v for k, v in provenance.items() if k != "config"}, indent=2, default=str), "```", ""]
    lines += ["## Data", "", *_sources_table(context), "", "## Limitations", "", *[f"- {x}" for x in LIMITATIONS],
              "", "## Use", "", "A Hugging Face model directory (config, safetensors, tokenizer): "
              "`AutoModelForCausalLM.from_pretrained(<this directory>)`; its chat template is the base model's.", ""]
    return _header(meta) + "\n" + "\n".join(lines)


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "1M<n<10M"


def dataset_card(selected: Sequence[Any], candidates: Sequence[Any], judgments: Sequence[Any],
                 report: Mapping[str, Any], *, select: Any, generate: Any = None,
                 context: Mapping[str, Any] | None = None, data_file: str = "selected.jsonl") -> str:
    """The dataset card of the selected set (see the module docstring)."""
    context = context or {}
    config = context.get("config") or {}
    models = Counter(c.model or "unknown" for c in candidates)
    base = str((config.get("model") or {}).get("base") or "")
    origin = Counter("reference" if (e.meta.get("decoding") or {}).get("strategy") == "reference" else "sample"
                     for e in selected)
    if config.get("generate"):  # the pipeline's own (a step is given only the sections it reads)
        from reset.config import GenerateConfig

        generate = GenerateConfig.model_validate(config["generate"])
    judges = sorted({n for j in judgments for n in (j.details.get("by_judge") or {})})
    strategies = report.get("selected_by_strategy", {})
    meta = {
        "pretty_name": f"ReSet selection ({report.get('mode', select.mode)})",
        "tags": ["synthetic", "reset", "rejection-sampling", "instruction-following", "faithfulness"],
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(len(selected))],
        "source_datasets": _dataset_ids(context) or None,
        "configs": [{"config_name": "default", "data_files": data_file}],
    }
    meta = {k: v for k, v in meta.items() if v is not None}
    gates = [g for g, on in (("if_pass", select.gate_if_pass), ("answer_correct", select.gate_answer_correct),
                             ("no_copy", select.gate_no_copy)) if on]
    lines = ["# ReSet selected set", "",
             f"Model-generated (synthetic) training data: {len(selected)} answers, one per kept seen prompt, sampled "
             "from the MTL model and kept by reject sampling (ReSet). The responses are the model's own; the "
             "prompts (instruction, context, constraints) are the seen prompts of the training mixture.", "",
             "## How it was made", "",
             f"- Generating model: {', '.join(f'`{m}` ({n} candidates)' for m, n in models.most_common())}"
             + (f"; `mtl` is the MTL checkpoint fine-tuned from `{base}`" if base else ""),
             f"- Selected answers: {origin['sample']} model samples, {origin['reference']} reference answers "
             "(the prompt's own response, where generate.include_reference put it among the candidates)",
             f"- Candidates: {report.get('candidates', len(candidates))} for {report.get('prompts', '')} prompts"
             + (f"; decoding grid {[d.model_dump() for d in generate.grid]}, {generate.samples_per_setting} "
                "samples per sampled setting" if generate is not None else ""),
             f"- Judges: {', '.join(judges) or 'n/a'}"
             + (f" (axis weights {config['judge'].get('weights')}, judge weights "
                f"{config['judge'].get('judge_weights') or {}})" if config.get("judge") else ""),
             f"- Selection: mode `{report.get('mode', select.mode)}`, threshold {report.get('threshold')}"
             + (f", top fraction {select.top_fraction} per kind" if select.mode == "reset-s" else "")
             + f"; gates required: {', '.join(gates) or 'none'}",
             f"- Kept {report.get('selected')} of {report.get('prompts')} prompts (keep rate "
             f"{_fmt(report.get('keep_rate'), 2)}), mean combined score {_fmt(report.get('mean_selected_score'))}; "
             f"kept by decoding strategy: {strategies or 'n/a'}", "", "## Keep rates", "",
             "| group | prompts | kept | keep rate |", "|---|---:|---:|---:|"]
    for title, key in (("", "per_group"), ("task ", "per_task"), ("constraint family ", "per_family")):
        for g, v in (report.get(key) or {}).items():
            lines.append(f"| {title}{g} | {v['prompts']} | {v['kept']} | {v['keep_rate']:.2f} |")
    if report.get("gated_out"):
        lines += ["", "Candidates failing a required gate: "
                  + ", ".join(f"{g} {n}" for g, n in report["gated_out"].items())]
    lines += ["", "## Fields", "",
              "The project's record schema (reset/data/records.py): id, source, kind, task, instruction, context, "
              "response (the kept answer), constraints (IFEval ids), meta (origin, candidate_id, combined score, "
              "per-axis scores, decoding).", "", "## Pipeline configuration", ""]
    shown = config or {"select": select.model_dump(), **({"generate": generate.model_dump()} if generate else {})}
    lines += ["```yaml", yaml.safe_dump(json.loads(json.dumps(shown, default=str)), sort_keys=True).rstrip(), "```",
              "", "## Limitations", "",
              "- The answers are a small model's own samples, kept by automatic judges (rules, lexical overlap, "
              "optionally an LLM): a judge's blind spot passes into the training data.",
              "- Meant for continued fine-tuning of the model that generated it, not as a benchmark.", ""]
    return _header(meta) + "\n" + "\n".join(lines)
