"""Open and close the pipeline's parent MLflow run."""

from kfp import dsl

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def start_run(
    data: dict, model: dict, train: dict, continued_train: dict, generate: dict, judge: dict,
    select: dict, evaluate: dict, register: dict, tracking: dict, kfp_job_id: str, kfp_job_name: str,
) -> str:
    """Create the parent MLflow run; returns its id. The whole config is logged as params."""
    from reset import steps

    config = {"data": data, "model": model, "train": train, "continued_train": continued_train,
              "generate": generate, "judge": judge, "select": select, "evaluate": evaluate,
              "register": register, "tracking": tracking}
    return steps.start_run(tracking, config, kfp_job_id, {"kfp.job_name": kfp_job_name})


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finish_run(tracking: dict, kfp_job_id: str) -> str:
    """Exit handler: mark the parent run of this KFP job FINISHED or FAILED from its children."""
    from reset import steps

    return steps.finish_run(tracking, kfp_job_id)
