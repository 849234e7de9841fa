"""Register the ReSet model (alias challenger); champion when the evaluate step's gates passed."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_model(
    reset_model: Input[Model], scores: Input[Artifact], register: dict, evaluate: dict, model: dict,
    tracking: dict,
) -> dict:
    from reset import steps

    cfg = steps.config(register=register, evaluate=evaluate, model=model, tracking=tracking)
    return steps.register(reset_model.path, scores.path, cfg)
