"""Thin KFP components, one per step of reset/config/steps.py: each reads its inputs, makes the
typed config (reset.steps.config) and makes the one library call (reset.steps.<step>).

Sections arrive as one dict parameter each (visible in the Kubeflow UI, and what KFP's cache and
`run --resume` compare). One exception, kept in one place: a task inside a dsl.ParallelFor (the
shards of generate, judge and evaluate's answers) reads the run's effective sections from
start-run's `sections` artifact instead, because kfp.local 2.17 replaces every task-output
parameter of a loop by the loop item (kfp/local/orchestrator/task_spec_utils.py,
create_parameter_loop_iteration_task_spec: the `task_output_parameter` branch;
https://github.com/kubeflow/pipelines/blob/master/sdk/python/kfp/local/orchestrator/task_spec_utils.py).
pipelines/reset_pipeline.py's `sharded` is the one caller that passes it.
"""

from components.evaluate import answer_heldout, evaluate_models, pick_round
from components.experiment import control_data, experiment_report
from components.finetune import finetune
from components.generate import generate_candidates
from components.judge import gather_judged, judge_candidates
from components.mix import mix_data
from components.promote import promote_challenger
from components.register import register_model
from components.run import finish_run, start_run
from components.select import select_samples

__all__ = [
    "answer_heldout", "control_data", "evaluate_models", "experiment_report", "finetune", "finish_run",
    "gather_judged", "generate_candidates", "judge_candidates", "mix_data", "pick_round", "promote_challenger",
    "register_model", "select_samples", "start_run",
]
