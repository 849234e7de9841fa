"""LoRA SFT: the MTL checkpoint from the base model, and ReSet's continued fine-tuning from it."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finetune_mtl(
    train_set: Input[Dataset], train: dict, model: dict, tracking: dict,
    parent_run_id: str, mtl_model: Output[Model],
) -> dict:
    """Fine-tune the base model (model["base"]: builtin:..., a directory or s3://) on the mixture."""
    from reset import steps

    m = steps.finetune(None, train_set.path, train, model, tracking, parent_run_id, stage="mtl",
                       out_dir=mtl_model.path)
    mtl_model.metadata.update({"stage": "mtl", "final_loss": m["final_loss"]})
    return {k: v for k, v in m.items() if k != "loss_history"}


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finetune_reset(
    mtl_model: Input[Model], selected_set: Input[Dataset], continued_train: dict, model: dict,
    tracking: dict, parent_run_id: str, reset_model: Output[Model],
) -> dict:
    """Continue fine-tuning the MTL checkpoint on the reject-sampled set (ReSet)."""
    from reset import steps

    m = steps.finetune(mtl_model.path, selected_set.path, continued_train, model, tracking, parent_run_id,
                       stage="reset", out_dir=reset_model.path)
    reset_model.metadata.update({"stage": "reset", "final_loss": m["final_loss"]})
    return {k: v for k, v in m.items() if k != "loss_history"}
