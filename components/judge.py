"""Judge every candidate on instruction following, faithfulness and task quality (or one shard's);
gather the shards' candidates and judgments in order."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def judge_candidates(
    seen_prompts: Input[Dataset], candidates: Input[Dataset], tracking: dict, judgments: Output[Dataset],
    judge: dict = {}, sections: Optional[Input[Artifact]] = None, shard: int = 0, shards: int = 1,  # noqa: B006
    round_number: int = 1,
) -> dict:
    from reset import steps

    cfg = steps.config(sections.path if sections is not None else "", tracking=tracking, judge=judge)
    stats = steps.judge(seen_prompts.path, candidates.path, cfg, out_judgments=judgments.path, shard=shard,
                        shards=shards, round_=round_number)
    judgments.metadata["rows"] = stats["judgments"]
    return stats


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gather_judged(
    seen_prompts: Input[Dataset], shard_candidates: Input[List[Dataset]], shard_judgments: Input[List[Dataset]],
    candidates: Output[Dataset], judgments: Output[Dataset],
) -> dict:
    from reset import steps

    stats = steps.gather(seen_prompts.path, [a.path for a in shard_candidates], [a.path for a in shard_judgments],
                         out_candidates=candidates.path, out_judgments=judgments.path)
    candidates.metadata["rows"] = stats["candidates"]
    judgments.metadata["rows"] = stats["judgments"]
    return stats
