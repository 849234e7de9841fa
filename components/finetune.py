"""Fine-tuning: the MTL checkpoint from the base model, ReSet's continued fine-tuning from it, and
every experiment arm (from the base model or another arm's checkpoint, on a part of the mixture).

On a cluster with `cluster.training.engine` set to pytorchjob or trainjob, the step hands the
training to Kubeflow's training engine (reset.handoff) and waits for it; `run_volume` is then the
run's PVC, which the training pods mount too.
"""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finetune(
    train_set: Input[Dataset], train: dict, model: dict, tracking: dict, stage: str, checkpoint: Output[Model],
    start_model: Optional[Input[Model]] = None, section: str = "train", kinds: list = [], seed: int = -1,  # noqa: B006
    run_volume: str = "",
) -> dict:
    """Fine-tune with the `section` config (`train` holds it) from `start_model` (none: model.base)
    on the training set (only examples of `kinds` when given); `seed` >= 0 overrides its seed."""
    from reset import handoff, steps

    cfg = steps.config(**{section: {**train, **({"seed": seed} if seed >= 0 else {})}}, model=model,
                       tracking=tracking)
    start = start_model.path if start_model is not None else None
    if handoff.engine():
        m = handoff.finetune(start, train_set.path, cfg, stage=stage, out_dir=checkpoint.path, section=section,
                             kinds=kinds, run_volume=run_volume)
    else:
        m = steps.finetune(start, train_set.path, cfg, stage=stage, out_dir=checkpoint.path, section=section,
                           kinds=kinds)
    checkpoint.metadata.update({"stage": stage, "final_loss": m["final_loss"]})
    return {k: v for k, v in m.items() if k != "loss_history"}
