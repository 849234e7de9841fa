"""Evaluate several models on the same held-out examples, generating for all of them at once.

    rows, metrics, gen = evaluate_models({"base": ref, "mtl": dir, "reset": dir}, examples, ecfg, mcfg, jcfg)

Generation goes through reset.models.generation.run_many: with vLLM, the models that share a base
(the base itself and its LoRA adapters) are answered by one engine in one batch. Each model's
answers are then scored like `evaluate` does (score_candidates), one row per (model, example).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reset import progress
from reset.config import DecodingSetting, EvaluateConfig, GenerateConfig, JudgeConfig, ModelConfig
from reset.data.chunks import Resume
from reset.data.records import Example
from reset.evaluation.metrics import Row, point_metrics, score_candidates
from reset.models.generation import record_phases_of_many, run_many


def greedy_config(cfg: EvaluateConfig, seed: int = 0) -> GenerateConfig:
    """The generation settings of evaluation: one greedy answer per prompt."""
    return GenerateConfig(grid=[DecodingSetting(temperature=0.0, top_p=1.0)], max_new_tokens=cfg.max_new_tokens,
                          batch_size=cfg.batch_size, backend=cfg.backend, seed=seed, chunk_prompts=cfg.chunk_prompts)


def evaluate_models(models: Mapping[str, str | os.PathLike[str]], examples: Sequence[Example], cfg: EvaluateConfig,
                    model_cfg: ModelConfig, judge_cfg: JudgeConfig, *, log: Callable[[str], None] = print,
                    offset: int = 0, resume: Resume | None = None,
                    ) -> tuple[dict[str, list[Row]], dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """(rows per model, point metrics per model, generation stats per model); `offset` and `resume`
    (the answers saved chunk by chunk, reused by a next attempt) as in reset.models.generation.run
    (one shard of the held-out set)."""
    gens = run_many(models, examples, greedy_config(cfg), model_cfg, log=log, offset=offset, resume=resume)
    rows: dict[str, list[Row]] = {}
    metrics: dict[str, dict[str, float]] = {}
    record_phases_of_many([g.stats for g in gens.values()])
    for name, g in gens.items():
        with progress.timed("score"):
            rows[name] = score_candidates(examples, g.candidates, judge_cfg, model_name=name)
        metrics[name] = point_metrics(rows[name])
        log(f"[evaluate] {name}: scored {len(rows[name])} answers")
    return rows, metrics, {name: g.stats for name, g in gens.items()}


def gather_rows(
    shard_rows: Sequence[Sequence[Row]], examples: Sequence[Example]
) -> tuple[dict[str, list[Row]], str | None]:
    """The evaluation shards' rows (each shard's list), in the unsharded step's order, by model;
    and the champion version they re-scored (None without a champion)."""
    from reset.data.shards import ordered

    ids = [e.id for e in examples]
    gathered = ordered(
        [r for rows in shard_rows for r in rows],
        ids,
        lambda r: r["example_id"],
        lambda r: (r["model"], r["example_id"]),
    )
    rows_by_model: dict[str, list] = {}
    for r in gathered:
        rows_by_model.setdefault(r["model"], []).append(r)
    short = {m: len(rs) for m, rs in rows_by_model.items() if len(rs) != len(examples)}
    if short:
        raise ValueError(
            f"the {len(shard_rows)} evaluation shards hold {short} rows per model, expected {len(examples)} each"
        )
    versions = {r.pop("registry_version", None) for r in rows_by_model.get("champion", [])}
    if len(versions) > 1:
        raise ValueError(f"the evaluation shards re-scored different champion versions: {sorted(versions)}")
    return rows_by_model, next(iter(versions), None)
