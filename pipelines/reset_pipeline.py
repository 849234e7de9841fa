"""The ReSet pipeline, read top to bottom like the method:

    mix data -> fine-tune (MTL) -> self-instruct generation -> judge -> reject-sampling filter
             -> continued fine-tuning from the MTL checkpoint -> evaluate (base, MTL, ReSet)
             -> register / promote

Parameters: one dict per config section (data, model, train, continued_train, generate, judge,
select, evaluate, register, tracking), validated by the library inside each step; their defaults
come from a YAML config (configs/demo.yaml) when compiled. An exit handler closes the MLflow
parent run whatever happens. `build_pipeline(cluster)` applies Kubernetes settings (GPUs,
secrets as env vars, resources) for a cluster; kfp.local ignores them.
"""


from kfp import dsl, kubernetes

from components import (
    evaluate_models,
    finetune_mtl,
    finetune_reset,
    finish_run,
    generate_candidates,
    judge_candidates,
    mix_data,
    register_model,
    select_samples,
    start_run,
)
from reset import config
from reset.config import ClusterConfig

PIPELINE_NAME = "reset"

# Task display names, in DAG order: the names `cluster.gpu_steps` refers to.
STEP_NAMES = list(config.STEP_NAMES)


def build_pipeline(cluster: "ClusterConfig | None" = None):
    """Return the ReSet @dsl.pipeline; with `cluster`, Kubernetes settings are applied to its tasks."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="ReSet (Dancing in Chains, EMNLP 2024): reconcile instruction following and faithfulness.",
    )
    def reset_pipeline(
        data: dict, model: dict, train: dict, continued_train: dict, generate: dict, judge: dict,
        select: dict, evaluate: dict, register: dict, tracking: dict,
    ):
        # The exit handler closes the MLflow parent run whatever happens. An exit task may not
        # depend on other tasks, so it finds the parent run by the KFP job id it was tagged with.
        finish = finish_run(tracking=tracking, kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        finish.set_display_name("finish-run").set_caching_options(False)

        with dsl.ExitHandler(finish, name="reset-steps"):
            # 0. the MLflow parent run (never cached: each pipeline run is a new MLflow run)
            start = start_run(
                data=data, model=model, train=train, continued_train=continued_train, generate=generate,
                judge=judge, select=select, evaluate=evaluate, register=register, tracking=tracking,
                kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, kfp_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            ).set_display_name("start-run").set_caching_options(False)
            run_id = start.output

            # 1. mix IF + CD data: train mixture, held-out split, seen-prompt pool, quarantine
            mixed = mix_data(data=data, tracking=tracking, parent_run_id=run_id).set_display_name("mix")

            # 2. MTL checkpoint: LoRA SFT of the base model on the mixture
            mtl = finetune_mtl(
                train_set=mixed.outputs["train_set"], train=train, model=model, tracking=tracking,
                parent_run_id=run_id,
            ).set_display_name("finetune-mtl")

            # 3. self-instruct: N samples per seen prompt over the decoding grid
            gen = generate_candidates(
                mtl_model=mtl.outputs["mtl_model"], seen_prompts=mixed.outputs["seen_prompts"],
                generate=generate, model=model, tracking=tracking, parent_run_id=run_id,
            ).set_display_name("generate")

            # 4. judge: instruction following, faithfulness, task -> weighted score
            judged = judge_candidates(
                seen_prompts=mixed.outputs["seen_prompts"], candidates=gen.outputs["candidates"], judge=judge,
                tracking=tracking, parent_run_id=run_id,
            ).set_display_name("judge")

            # 5. reject sampling: best per prompt (ReSet) or the stricter top set (ReSet-S)
            chosen = select_samples(
                seen_prompts=mixed.outputs["seen_prompts"], candidates=gen.outputs["candidates"],
                judgments=judged.outputs["judgments"], select=select, tracking=tracking, parent_run_id=run_id,
            ).set_display_name("select")

            # 6. continued fine-tuning from the MTL checkpoint on the selected set
            rs = finetune_reset(
                mtl_model=mtl.outputs["mtl_model"], selected_set=chosen.outputs["selected_set"],
                continued_train=continued_train, model=model, tracking=tracking, parent_run_id=run_id,
            ).set_display_name("finetune-reset")

            # 7. evaluate base, MTL and ReSet on the held-out split (both axes)
            ev = evaluate_models(
                mtl_model=mtl.outputs["mtl_model"], reset_model=rs.outputs["reset_model"],
                heldout_set=mixed.outputs["heldout_set"], evaluate=evaluate, model=model, judge=judge,
                tracking=tracking, parent_run_id=run_id,
            ).set_display_name("evaluate")

            # 8. register the ReSet model as challenger; promote to champion if no worse
            reg = register_model(
                reset_model=rs.outputs["reset_model"], scores=ev.outputs["scores"], register=register,
                evaluate=evaluate, model=model, tracking=tracking, parent_run_id=run_id,
            ).set_display_name("register")

        # Steps that sample are not cached; neither are steps with side effects on MLflow.
        for task in (mixed, mtl, gen, judged, chosen, rs, ev, reg):
            task.set_caching_options(False)
        if cluster is not None:
            tasks = {"start-run": start, "finish-run": finish, "mix": mixed, "finetune-mtl": mtl, "generate": gen,
                     "judge": judged, "select": chosen, "finetune-reset": rs, "evaluate": ev, "register": reg}
            _apply_cluster(cluster, tasks)

    return reset_pipeline


def _apply_cluster(cluster: "ClusterConfig", tasks: "dict[str, dsl.PipelineTask]") -> None:
    """Kubernetes settings per task; `tasks` maps the display names above to their tasks."""
    for name, task in tasks.items():
        if cluster.image:
            task.set_container_image(cluster.image)
        if cluster.s3_secret:
            kubernetes.use_secret_as_env(
                task, secret_name=cluster.s3_secret, optional=True,
                secret_key_to_env={k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")},
            )
        if cluster.mlflow_secret:
            kubernetes.use_secret_as_env(
                task, secret_name=cluster.mlflow_secret, optional=True,
                secret_key_to_env={k: k for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                                  "MLFLOW_TRACKING_TOKEN")},
            )
        if cluster.llm_secret and cluster.llm_secret_keys and name in ("judge", "evaluate"):
            kubernetes.use_secret_as_env(
                task, secret_name=cluster.llm_secret, optional=True,
                secret_key_to_env={k: k for k in cluster.llm_secret_keys},
            )
        task.set_cpu_request(cluster.cpu_request).set_memory_request(cluster.memory_request)
        task.set_memory_limit(cluster.memory_limit)
        if cluster.retries and name not in ("start-run", "finish-run"):
            task.set_retry(num_retries=cluster.retries, backoff_duration="30s")
        if name in cluster.gpu_steps and cluster.gpus > 0:
            task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(cluster.gpus)
            kubernetes.add_toleration(task, key=cluster.gpu_resource, operator="Exists", effect="NoSchedule")
