"""Thin KFP components, one per pipeline step; each is a call into `reset.steps`."""

from components.evaluate import evaluate_models
from components.finetune import finetune_mtl, finetune_reset
from components.generate import generate_candidates
from components.judge import judge_candidates
from components.mix import mix_data
from components.register import register_model
from components.run import finish_run, start_run
from components.select import select_samples
from components.shards import answer_heldout, evaluate_gathered, gather_judged, generate_shard, judge_shard

__all__ = [
    "answer_heldout", "evaluate_gathered", "gather_judged", "generate_shard", "judge_shard", "evaluate_models", "finetune_mtl", "finetune_reset", "finish_run", "generate_candidates",
    "judge_candidates", "mix_data", "register_model", "select_samples", "start_run",
]
