"""Self-instruct generation: N samples per seen prompt over the decoding grid."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def generate_candidates(
    mtl_model: Input[Model], seen_prompts: Input[Dataset], generate: dict, model: dict, tracking: dict,
    candidates: Output[Dataset],
) -> dict:
    from reset import steps

    stats = steps.generate(mtl_model.path, seen_prompts.path, generate, model, tracking, "",
                           out_candidates=candidates.path)
    candidates.metadata["rows"] = stats["candidates"]
    return stats
