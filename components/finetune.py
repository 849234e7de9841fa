"""LoRA SFT: the MTL checkpoint from the base model, and ReSet's continued fine-tuning from it.

On a cluster with `cluster.training.engine` set to pytorchjob or trainjob, the step hands the
training to Kubeflow's training engine (reset.handoff) and waits for it; `run_volume` is then the
run's PVC, which the training pods mount too.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finetune_mtl(
    train_set: Input[Dataset], train: dict, model: dict, tracking: dict, mtl_model: Output[Model],
    run_volume: str = "",
) -> dict:
    """Fine-tune the base model (model["base"]: builtin:..., a directory or s3://) on the mixture."""
    from reset import handoff, steps

    if handoff.engine():
        m = handoff.finetune(None, train_set.path, train, model, tracking, stage="mtl", out_dir=mtl_model.path,
                             run_volume=run_volume)
    else:
        m = steps.finetune(None, train_set.path, train, model, tracking, "", stage="mtl", out_dir=mtl_model.path)
    mtl_model.metadata.update({"stage": "mtl", "final_loss": m["final_loss"]})
    return {k: v for k, v in m.items() if k != "loss_history"}


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finetune_reset(
    mtl_model: Input[Model], selected_set: Input[Dataset], continued_train: dict, model: dict,
    tracking: dict, reset_model: Output[Model], run_volume: str = "",
) -> dict:
    """Continue fine-tuning the MTL checkpoint on the reject-sampled set (ReSet)."""
    from reset import handoff, steps

    if handoff.engine():
        m = handoff.finetune(mtl_model.path, selected_set.path, continued_train, model, tracking, stage="reset",
                             out_dir=reset_model.path, run_volume=run_volume)
    else:
        m = steps.finetune(mtl_model.path, selected_set.path, continued_train, model, tracking, "",
                           stage="reset", out_dir=reset_model.path)
    reset_model.metadata.update({"stage": "reset", "final_loss": m["final_loss"]})
    return {k: v for k, v in m.items() if k != "loss_history"}
