"""The experiment's own steps (pipelines/experiment_pipeline.py): the control's data and the report
across seeds. Its arms run through the ReSet pipeline's components."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def control_data(selected_set: Input[Dataset], seen_prompts: Input[Dataset], control_set: Output[Dataset]) -> int:
    """The control's data: the reference answers of the prompts ReSet kept."""
    from reset import steps

    return steps.control_set(selected_set.path, seen_prompts.path, out_path=control_set.path)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def experiment_report(scores: Input[List[Artifact]], tracking: dict, report: Output[Markdown],
                      summary: Output[Artifact], tradeoff_scores: Optional[Input[List[Artifact]]] = None) -> str:
    """The arms across seeds, pooled: the primary hypothesis, the Holm-adjusted family, the spread.
    `tradeoff_scores`: the trade-off arms' evaluations (their own loop), merged by seed."""
    from reset import steps

    paths = [a.path for a in scores] + [a.path for a in tradeoff_scores or []]
    data = steps.experiment_report(paths, steps.config(tracking=tracking), out_report=report.path,
                                   out_json=summary.path)
    return str((data.get("primary") or {}).get("reason", ""))
