"""Judge every candidate on instruction following, faithfulness and task quality."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def judge_candidates(
    seen_prompts: Input[Dataset], candidates: Input[Dataset], judge: dict, tracking: dict,
    judgments: Output[Dataset],
) -> dict:
    from reset import steps

    stats = steps.judge(seen_prompts.path, candidates.path, judge, tracking, "",
                        out_judgments=judgments.path)
    judgments.metadata["rows"] = stats["judgments"]
    return stats
