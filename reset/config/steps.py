"""Every task of the pipelines, declared once.

A step's `name` is its task's display name, its kfp.local task name, its key in cluster.resources,
cluster.cache_steps and cluster.s3_steps, and the name of its MLflow step run; `call` is the one
library function its component calls; `sections` the config sections it reads; the facts its
cluster settings follow (the run's volume, S3, a GPU by default, KFP's cache) are its flags. The
DAGs (pipelines/) create tasks by these names, the cluster settings (pipelines/cluster.py) and the
config (reset/config/cluster.py) derive from them; docs/design.md opens with this table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str
    does: str
    call: str  # the library function the component calls (reset.steps.<call>)
    sections: tuple[str, ...] = ()
    volume: bool = False  # holds models: mounts the run's volume on a cluster
    s3: bool = False  # reads or writes S3 (its S3 Secret is required)
    gpu: bool = False  # gets a GPU in the default resources
    cacheable: bool = False  # deterministic given its inputs: KFP may serve it from its cache by default
    shardable: bool = False  # runs as cluster.shards parallel tasks over pieces of its prompts


# The ReSet pipeline, in DAG order (pipelines/reset_pipeline.py).
PIPELINE: tuple[Step, ...] = (
    Step("mix", "IF + CD sources mixed: train, dev, test, seen prompts, quarantine, data card", "mix",
         ("data", "model"), volume=True, s3=True, cacheable=True),
    Step("finetune-mtl", "the MTL checkpoint: SFT (LoRA or full) of the base model on the mixture", "finetune",
         ("train", "model"), volume=True, s3=True, gpu=True),
    Step("generate", "self-instruct: N samples per seen prompt over the decoding grid", "generate",
         ("generate", "model"), volume=True, s3=True, gpu=True, shardable=True),
    Step("judge", "every candidate scored on instruction following, faithfulness and task", "judge",
         ("judge",), volume=True, s3=True, shardable=True),
    Step("select", "reject sampling: the best candidate per prompt (ReSet) or a stricter set (ReSet-S)", "select",
         ("select",), cacheable=True),
    Step("finetune-reset", "ReSet: continued SFT of the MTL checkpoint on the selection", "finetune",
         ("continued_train", "model"), volume=True, s3=True, gpu=True),
    Step("evaluate", "base, MTL, ReSet (and the champion) on the test split; the comparison and the gate",
         "evaluate", ("evaluate", "model", "judge", "register"), volume=True, s3=True, gpu=True, shardable=True),
    Step("register", "the ReSet model registered as challenger; champion when the gate passed", "register",
         ("register", "evaluate", "model"), volume=True, s3=True),
)
# Around every pipeline: the parent MLflow run.
RUN: tuple[Step, ...] = (
    Step("start-run", "the whole config validated once; the MLflow parent run; the effective sections",
         "start_run"),
    Step("finish-run", "exit handler: the parent run marked FINISHED or FAILED", "finish_run"),
)
# The promotion pipeline (pipelines/promotion_pipeline.py).
PROMOTION: tuple[Step, ...] = (
    Step("promote", "champion and challenger re-scored on the frozen set; the alias moved when the gate passes",
         "reset.promotion.promote", ("register", "evaluate", "model", "judge"), s3=True, gpu=True),
)
# Tasks that are a part of a step above and take its cluster settings.
PARTS: dict[str, str] = {
    "gather": "judge",  # the shards' candidates and judgments, gathered in order
    "answer": "evaluate",  # one shard of the evaluation's answers; the experiment's base answers
    "control-data": "select",  # the experiment's control set
    "report": "finish-run",  # the experiment's report across seeds
    "pick-round": "evaluate",  # select.rounds > 1: every round on the dev split, the best is the ReSet model
}

STEPS: dict[str, Step] = {s.name: s for s in (*RUN, *PIPELINE, *PROMOTION)}
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in PIPELINE)
STEP_NAMES_ALL: tuple[str, ...] = tuple(STEPS)


def settings_of(task: str) -> str:
    """The step whose cluster settings a task takes: its own, a part's step (PARTS), for a later
    ReSet round's task (generate-r2, finetune-reset-r2) its round-1 step's, or for the experiment's
    arm tasks (finetune-if-only, select-reset-s, answer-base, pick-round-reset-2r, ...) the step
    they run."""
    task = re.sub(r"-r\d+$", "", task)
    if task in STEPS:
        return task
    if task.startswith("finetune-reset") or task == "finetune-control":  # continued from the MTL checkpoint
        return "finetune-reset"
    head = task.split("-", 1)[0]
    parts = task.split("-")
    for prefix in ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]:
        if prefix in PARTS:
            return PARTS[prefix]
    if head == "finetune":
        return "finetune-mtl"
    if head in STEPS:
        return head
    raise KeyError(f"no step named {task!r} (reset/config/steps.py)")


def s3_steps() -> list[str]:
    return [s.name for s in STEPS.values() if s.s3]


def cacheable_steps() -> list[str]:
    return [s.name for s in STEPS.values() if s.cacheable]
