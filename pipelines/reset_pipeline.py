"""The ReSet pipeline, read top to bottom like the method:

    mix data -> fine-tune (MTL) -> self-instruct generation -> judge -> reject-sampling filter
             -> continued fine-tuning from the MTL checkpoint -> evaluate (base, MTL, ReSet)
             -> register (challenger; promotion is a separate pipeline: pipelines/promotion_pipeline.py)

Parameters: the run form's typed scalars (base model, data sources, mode, epochs, learning rate,
samples per prompt, judge endpoint and model, registered model name; reset/config/run_parameters.py)
and one dict per config section for everything else, validated by the library inside each step.
`start-run` puts the scalars into the sections and hands the effective sections to the steps.
An exit handler closes the MLflow parent run whatever happens.

`build_pipeline(cluster)` applies Kubernetes settings for a cluster (kfp.local ignores them): the
run's PVC on the model steps, per-step resources, node selectors, timeouts, Secrets, caching and
the hand-off of fine-tuning to Kubeflow's training engine.
"""

import json

from kfp import dsl, kubernetes

from components import (
    answer_heldout,
    evaluate_gathered,
    evaluate_models,
    finetune_mtl,
    finetune_reset,
    finish_run,
    gather_judged,
    generate_candidates,
    generate_shard,
    judge_candidates,
    judge_shard,
    mix_data,
    register_model,
    select_samples,
    start_run,
)
from reset import config, handoff, tracking
from reset.config import ClusterConfig, PipelineConfig
from reset.config.run_parameters import RUN_PARAMETERS

PIPELINE_NAME = "reset"

# Task display names, in DAG order: the names `cluster.resources` and `cluster.cache_steps` refer to.
STEP_NAMES = list(config.STEP_NAMES)
# Steps that hold models (the base-model cache, checkpoints, exports): they mount the run's volume.
VOLUME_STEPS = ("mix", "finetune-mtl", "generate", "judge", "finetune-reset", "evaluate", "register")
# The sharded DAG's extra tasks take the settings (resources, volume, Secrets) of the step they belong to.
SETTINGS_OF = {"gather": "judge", "answer": "evaluate"}
# The pod label KFP puts on every task pod: the run id, which the steps find their MLflow parent by.
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"


def _docstring() -> str:
    """The pipeline's docstring; KFP turns its Args into the parameters' descriptions in the UI."""
    lines = ["ReSet (Dancing in Chains, EMNLP 2024): reconcile instruction following and faithfulness.", "",
             "Args:"]
    for p in RUN_PARAMETERS:
        lines.append(f"    {p.name}: {p.description}")
    for name in config.SECTIONS:
        doc = (PipelineConfig.model_fields[name].description or "").strip().rstrip(".")
        lines.append(f"    {name}: The {name} config section (JSON): {doc}. Keys the typed parameters set are "
                     "overridden by them.")
    return "\n".join(lines)


def build_pipeline(cluster: "ClusterConfig | None" = None, *, llm_judges: bool = False, shards: int | None = None):
    """Return the ReSet @dsl.pipeline; with `cluster`, Kubernetes settings are applied to its tasks
    (`llm_judges`: the compiled config uses an LLM judge, so its Secret is required). `shards`
    (default: cluster.shards, else 1): above 1, generate + judge and the answering of evaluate run
    as that many parallel tasks each (dsl.ParallelFor), gathered in order (dsl.Collected)."""
    shards = shards or (cluster.shards if cluster is not None else 1)

    def reset_pipeline(
        base_model: str, instruction_data: str, grounded_data: str, mode: str, epochs: float,
        learning_rate: float, samples_per_prompt: int, judge_endpoint: str, judge_model: str,
        registered_model_name: str,
        data: dict, model: dict, train: dict, continued_train: dict, generate: dict, judge: dict,
        select: dict, evaluate: dict, register: dict, tracking: dict,
    ):
        # The exit handler closes the MLflow parent run whatever happens. An exit task may not
        # depend on other tasks, so it finds the parent run by the KFP run id it was tagged with.
        finish = finish_run(tracking=tracking, kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        finish.set_display_name("finish-run").set_caching_options(False)

        with dsl.ExitHandler(finish, name="reset-steps"):
            # The run's volume: the base-model cache, checkpoints and adapters live here, not in KFP artifacts.
            pvc = volume = None
            if cluster is not None:
                if cluster.storage.claim:
                    volume = cluster.storage.claim
                else:
                    pvc = kubernetes.CreatePVC(
                        pvc_name_suffix="-reset-run", access_modes=[cluster.storage.access_mode],
                        size=cluster.storage.size,
                        **({"storage_class_name": cluster.storage.storage_class} if cluster.storage.storage_class else {}),
                    ).set_display_name("create-volume").set_caching_options(False)  # a cached one names a deleted PVC
                    volume = pvc.outputs["name"]

            # 0. the MLflow parent run; the run form's parameters put into the sections
            cfg = start_run(
                data=data, model=model, train=train, continued_train=continued_train, generate=generate,
                judge=judge, select=select, evaluate=evaluate, register=register, tracking=tracking,
                base_model=base_model, instruction_data=instruction_data, grounded_data=grounded_data, mode=mode,
                epochs=epochs, learning_rate=learning_rate, samples_per_prompt=samples_per_prompt,
                judge_endpoint=judge_endpoint, judge_model=judge_model,
                registered_model_name=registered_model_name,
                kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, kfp_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            ).set_display_name("start-run").set_caching_options(False)
            if pvc is not None:
                cfg.after(pvc)
            c = cfg.outputs

            # 1. mix IF + CD data: train mixture, held-out split, seen-prompt pool, quarantine
            mixed = mix_data(data=c["data"], model=c["model"], tracking=tracking).set_display_name("mix")

            # 2. MTL checkpoint: LoRA SFT of the base model on the mixture (an adapter + its base reference)
            mtl = finetune_mtl(
                train_set=mixed.outputs["train_set"], train=c["train"], model=c["model"], tracking=tracking,
                **({"run_volume": volume} if _hands_off(cluster) else {}),
            ).set_display_name("finetune-mtl")

            # 3. self-instruct: N samples per seen prompt over the decoding grid
            # 4. judge: instruction following, faithfulness, task -> weighted score
            # (sharded: both per contiguous piece of the seen prompts, then gathered in order)
            extra = {}
            if shards > 1:
                with dsl.ParallelFor(items=list(range(shards)), name="generate-shards") as k:
                    gen = generate_shard(
                        mtl_model=mtl.outputs["mtl_model"], seen_prompts=mixed.outputs["seen_prompts"],
                        sections=c["sections"], tracking=tracking, shard=k, shards=shards,
                    ).set_display_name("generate")
                    judged = judge_shard(
                        seen_prompts=mixed.outputs["seen_prompts"], candidates=gen.outputs["candidates"],
                        sections=c["sections"], tracking=tracking, shard=k, shards=shards,
                    ).set_display_name("judge")
                gathered = gather_judged(
                    seen_prompts=mixed.outputs["seen_prompts"],
                    shard_candidates=dsl.Collected(gen.outputs["candidates"]),
                    shard_judgments=dsl.Collected(judged.outputs["judgments"]),
                ).set_display_name("gather")
                extra["gather"] = gathered
                candidates, judgments = gathered.outputs["candidates"], gathered.outputs["judgments"]
            else:
                gen = generate_candidates(
                    mtl_model=mtl.outputs["mtl_model"], seen_prompts=mixed.outputs["seen_prompts"],
                    generate=c["generate"], model=c["model"], tracking=tracking,
                ).set_display_name("generate")
                judged = judge_candidates(
                    seen_prompts=mixed.outputs["seen_prompts"], candidates=gen.outputs["candidates"],
                    judge=c["judge"], tracking=tracking,
                ).set_display_name("judge")
                candidates, judgments = gen.outputs["candidates"], judged.outputs["judgments"]

            # 5. reject sampling: best per prompt (ReSet) or the stricter top set (ReSet-S)
            chosen = select_samples(
                seen_prompts=mixed.outputs["seen_prompts"], candidates=candidates,
                judgments=judgments, select=c["select"], tracking=tracking,
            ).set_display_name("select")

            # 6. continued fine-tuning from the MTL checkpoint on the selected set
            rs = finetune_reset(
                mtl_model=mtl.outputs["mtl_model"], selected_set=chosen.outputs["selected_set"],
                continued_train=c["continued_train"], model=c["model"], tracking=tracking,
                **({"run_volume": volume} if _hands_off(cluster) else {}),
            ).set_display_name("finetune-reset")

            # 7. evaluate base, MTL and ReSet on the held-out split (both axes)
            if shards > 1:  # answers per contiguous piece of the held-out set; statistics on them all
                with dsl.ParallelFor(items=list(range(shards)), name="answer-shards") as k:
                    ans = answer_heldout(
                        mtl_model=mtl.outputs["mtl_model"], reset_model=rs.outputs["reset_model"],
                        test_set=mixed.outputs["test_set"], dev_set=mixed.outputs["dev_set"], sections=c["sections"], tracking=tracking,
                        shard=k, shards=shards,
                    ).set_display_name("answer")
                extra["answer"] = ans
                ev = evaluate_gathered(
                    mtl_model=mtl.outputs["mtl_model"], reset_model=rs.outputs["reset_model"],
                    test_set=mixed.outputs["test_set"], dev_set=mixed.outputs["dev_set"], shard_answers=dsl.Collected(ans.outputs["answers"]),
                    selection_report=chosen.outputs["selection_report"], evaluate=c["evaluate"], model=c["model"],
                    judge=c["judge"], register=c["register"], tracking=tracking,
                ).set_display_name("evaluate")
            else:
                ev = evaluate_models(
                    mtl_model=mtl.outputs["mtl_model"], reset_model=rs.outputs["reset_model"],
                    test_set=mixed.outputs["test_set"], dev_set=mixed.outputs["dev_set"],
                    selection_report=chosen.outputs["selection_report"], evaluate=c["evaluate"], model=c["model"],
                    judge=c["judge"], register=c["register"], tracking=tracking,
                ).set_display_name("evaluate")

            # 8. register the ReSet model as challenger (and champion when there is none yet)
            reg = register_model(
                reset_model=rs.outputs["reset_model"], scores=ev.outputs["scores"], register=c["register"],
                evaluate=c["evaluate"], model=c["model"], tracking=tracking,
            ).set_display_name("register")

            if pvc is not None and not cluster.storage.keep:  # a failed run keeps it, for a look inside
                kubernetes.DeletePVC(pvc_name=volume).after(reg).set_display_name("delete-volume").set_caching_options(False)

        tasks = {"start-run": cfg, "finish-run": finish, "mix": mixed, "finetune-mtl": mtl, "generate": gen,
                 "judge": judged, "select": chosen, "finetune-reset": rs, "evaluate": ev, "register": reg, **extra}
        for name, task in tasks.items():
            # Cacheable: deterministic steps named in cluster.cache_steps. Their inputs hold no run
            # id: the parent run is found by the run's id. Locally every step but the run's own
            # bookkeeping: the CLI gives each run folder its own kfp.local cache, so only
            # `run --resume` of that folder reuses what finished (pipelines/local_runs.py).
            if cluster is not None:
                task.set_caching_options(SETTINGS_OF.get(name, name) in cluster.cache_steps)
            else:
                task.set_caching_options(name not in ("start-run", "finish-run"))
        if cluster is not None:
            _apply_cluster(cluster, tasks, volume, llm_judges=llm_judges)

    reset_pipeline.__doc__ = _docstring()
    return dsl.pipeline(name=PIPELINE_NAME, description=_docstring().split("\n")[0])(reset_pipeline)


def _hands_off(cluster: "ClusterConfig | None") -> bool:
    return cluster is not None and cluster.training.engine != "pod"


def _secret(task, name: str, keys, required: bool) -> None:
    kubernetes.use_secret_as_env(task, secret_name=name, optional=not required,
                                 secret_key_to_env={k: k for k in keys})


def _apply_cluster(cluster: "ClusterConfig", tasks: "dict[str, dsl.PipelineTask]", volume, *,
                   llm_judges: bool = False) -> None:
    """Kubernetes settings per task; `tasks` maps the display names above to their tasks."""
    from components.image import BASE_IMAGE

    image = cluster.image or BASE_IMAGE
    mount = cluster.storage.mount_path
    for task_name, task in tasks.items():
        name = SETTINGS_OF.get(task_name, task_name)  # gather / answer: the settings of judge / evaluate
        task.set_container_image(image)
        kubernetes.use_field_path_as_env(task, env_name=tracking.JOB_ENV, field_path=RUN_ID_FIELD)
        if cluster.s3_secret:
            _secret(task, cluster.s3_secret, ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"),
                    required=name in cluster.s3_steps)
        if cluster.mlflow_secret:
            _secret(task, cluster.mlflow_secret, ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                                  "MLFLOW_TRACKING_TOKEN"), required=cluster.mlflow_secret_required)
        if cluster.llm_secret and cluster.llm_secret_keys and name in ("judge", "evaluate"):
            _secret(task, cluster.llm_secret, cluster.llm_secret_keys, required=llm_judges)
        if volume is not None and name in VOLUME_STEPS:
            kubernetes.mount_pvc(task, pvc_name=volume, mount_path=mount)
            task.set_env_variable("RESET_CACHE_DIR", f"{mount}/cache")
            task.set_env_variable("HF_HOME", f"{mount}/cache/hf")
        res = cluster.step_resources(name)
        handed_off = name.startswith("finetune-") and cluster.training.engine != "pod"
        if handed_off:  # the pod only launches and watches the training job; the job gets `res`
            stage = name.removeprefix("finetune-")
            task.set_env_variable(handoff.ENV, json.dumps(handoff.settings(cluster, stage, image), sort_keys=True))
            task.set_cpu_request("500m").set_memory_request("2Gi").set_memory_limit("4Gi")
            kubernetes.set_timeout(task, cluster.training.timeout_s + 3600)
        else:
            task.set_cpu_request(res.cpu).set_memory_request(res.memory)
            task.set_memory_limit(res.memory_limit or res.memory)
            if res.cpu_limit:
                task.set_cpu_limit(res.cpu_limit)
            if res.gpus:
                task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(res.gpus)
                kubernetes.add_toleration(task, key=cluster.gpu_resource, operator="Exists", effect="NoSchedule")
                if res.gpu_type:
                    kubernetes.add_node_selector(task, label_key=cluster.gpu_node_label, label_value=res.gpu_type)
            if res.timeout_s:
                kubernetes.set_timeout(task, res.timeout_s)
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path="/scratch",
                                   size_limit=res.ephemeral_storage if not handed_off else "1Gi")
        task.set_env_variable("TMPDIR", "/scratch")
        if cluster.retries and name not in ("start-run", "finish-run"):
            task.set_retry(num_retries=cluster.retries, backoff_duration="30s")
