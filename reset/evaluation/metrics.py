"""Evaluation on the held-out split: both axes of the paper plus task quality, per model.

Each model answers every held-out prompt greedily; the same judges as selection score the
answers. Metrics (all in [0, 1]):
  if_prompt_acc       share of prompts with verifiable instructions whose every instruction is
                      followed (IFEval's strict prompt-level accuracy)
  if_instruction_acc  share of single instructions followed (instruction-level accuracy)
  if_prompt_loose,    the same two in IFEval's loose mode (the response also tried without its
  if_instruction_loose  first / last line and without '*'); never below the strict ones
  faithfulness        mean faithfulness score over grounded prompts, from the configured judges
                      (default K-Precision; embedding, NLI or the LLM judge when configured), also
                      split by task type (faithfulness_extractive / _abstractive, reported apart)
  task                mean task score against the reference (all prompts)
  combined            mean weighted score, as in selection
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from reset import ifeval
from reset.config import DecodingSetting, EvaluateConfig, GenerateConfig, JudgeConfig, ModelConfig
from reset.data.records import Example, Judgment
from reset.judging import build_judges, close_judges, judge
from reset.models.generation import generate

# The two axes of the paper, used for promotion.
PRIMARY = ("if_prompt_acc", "faithfulness")


def evaluate(
    model_dir: str | os.PathLike[str],
    examples: Sequence[Example],
    cfg: EvaluateConfig,
    model_cfg: ModelConfig,
    judge_cfg: JudgeConfig,
    *,
    model_name: str = "",
    log: Callable[[str], None] = print,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Generate greedy answers with the model and score them with the configured judges.
    Returns (metrics, per-example rows)."""
    gen_cfg = GenerateConfig(
        grid=[DecodingSetting(temperature=0.0, top_p=1.0)], max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size
    )
    cands = generate(model_dir, examples, gen_cfg, model_cfg, model_name=model_name, log=log)
    judges = build_judges(judge_cfg)
    try:
        judgments = judge(examples, cands, judge_cfg.weights, judges, judge_cfg.judge_weights)
    finally:
        close_judges(judges)
    metrics = metrics_of(examples, judgments, [c.text for c in cands])
    rows = [
        {
            "model": model_name,
            "example_id": ex.id,
            "kind": ex.kind,
            "task": ex.task,
            "response": c.text,
            **{f"score_{k}": v for k, v in j.scores.items()},
            "combined": j.combined,
        }
        for ex, c, j in zip(examples, cands, judgments, strict=True)
    ]
    return metrics, rows


def metrics_of(examples: Sequence[Example], judgments: Sequence[Judgment], responses: Sequence[str]) -> dict[str, float]:
    by_id = {e.id: e for e in examples}
    constrained: list[tuple[Any, str, str]] = []
    faith: dict[str, list[float]] = {"all": [], "extractive": [], "abstractive": []}
    task, combined = [], []
    for j, text in zip(judgments, responses, strict=True):
        ex = by_id[j.example_id]
        if ex.constraints:
            constrained.append((ex.constraints, text, ex.instruction))
        if j.scores.get("faithfulness") is not None:
            faith["all"].append(j.scores["faithfulness"])
            if ex.task in faith:
                faith[ex.task].append(j.scores["faithfulness"])
        if j.scores.get("task") is not None:
            task.append(j.scores["task"])
        combined.append(j.combined)
    acc = ifeval.ifeval_accuracy(constrained)
    out = {
        "if_prompt_acc": acc["prompt_strict"],
        "if_instruction_acc": acc["instruction_strict"],
        "if_prompt_loose": acc["prompt_loose"],
        "if_instruction_loose": acc["instruction_loose"],
        "faithfulness": _mean(faith["all"]),
        "faithfulness_extractive": _mean(faith["extractive"]),
        "faithfulness_abstractive": _mean(faith["abstractive"]),
        "task": _mean(task),
        "combined": _mean(combined),
        "n_examples": float(len(judgments)),
    }
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
