"""Self-instruct generation: N samples per seen prompt over the decoding grid (or one shard of them)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def generate_candidates(
    mtl_model: Input[Model], seen_prompts: Input[Dataset], tracking: dict, candidates: Output[Dataset],
    generate: dict = {}, model: dict = {}, sections: Optional[Input[Artifact]] = None,  # noqa: B006
    shard: int = 0, shards: int = 1, seed: int = -1, round_number: int = 1,
) -> dict:
    """`sections`: the run's sections artifact, for a task inside a ParallelFor (components/__init__.py);
    `round_number` > 1: a later ReSet round (sampling from the previous round's model)."""
    from reset import steps

    cfg = steps.config(sections.path if sections is not None else "", tracking=tracking, model=model,
                       generate={**generate, **({"seed": seed} if seed >= 0 else {})})
    stats = steps.generate(mtl_model.path, seen_prompts.path, cfg, out_candidates=candidates.path, shard=shard,
                           shards=shards, round_=round_number)
    candidates.metadata["rows"] = stats["candidates"]
    return stats
