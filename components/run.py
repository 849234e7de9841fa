"""Open and close the pipeline's parent MLflow run; put the run form's typed parameters into the
config sections the steps read."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def start_run(
    data: dict, model: dict, train: dict, continued_train: dict, generate: dict, judge: dict,
    select: dict, evaluate: dict, register: dict, tracking: dict,
    base_model: str, instruction_data: str, grounded_data: str, mode: str, epochs: float, learning_rate: float,
    samples_per_setting: int, judge_endpoint: str, judge_model: str, registered_model_name: str,
    kfp_job_id: str, kfp_job_name: str, sections: Output[Artifact],
) -> NamedTuple("Sections", [
    ("data", dict), ("model", dict), ("train", dict), ("continued_train", dict), ("generate", dict),
    ("judge", dict), ("select", dict), ("evaluate", dict), ("register", dict),
]):
    """Validate the whole config once (sections + the run form's parameters), create the parent
    MLflow run tagged with the KFP run id, and hand the effective sections to the steps (as
    outputs, and as one JSON artifact for the tasks inside a ParallelFor: components/__init__.py)."""
    from collections import namedtuple

    from reset import steps
    from reset import tracking as tr
    from reset.config.run_parameters import apply_run_parameters

    config = apply_run_parameters(
        {"data": data, "model": model, "train": train, "continued_train": continued_train, "generate": generate,
         "judge": judge, "select": select, "evaluate": evaluate, "register": register, "tracking": tracking},
        {"base_model": base_model, "instruction_data": instruction_data, "grounded_data": grounded_data,
         "mode": mode, "epochs": epochs, "learning_rate": learning_rate, "samples_per_setting": samples_per_setting,
         "judge_endpoint": judge_endpoint, "judge_model": judge_model,
         "registered_model_name": registered_model_name})
    steps.start_run(config, tr.job_id(kfp_job_id), {"kfp.job_name": kfp_job_name}, out_sections=sections.path)
    names = ["data", "model", "train", "continued_train", "generate", "judge", "select", "evaluate", "register"]
    return namedtuple("Sections", names)(*[config[k] for k in names])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finish_run(tracking: dict, kfp_job_id: str) -> str:
    """Exit handler: mark the parent run of this KFP job FINISHED or FAILED from its children."""
    from reset import steps
    from reset import tracking as tr

    return steps.finish_run(steps.config(tracking=tracking), tr.job_id(kfp_job_id))
