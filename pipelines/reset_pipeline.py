"""The ReSet pipeline, read top to bottom like the method:

    mix data -> fine-tune (MTL) -> self-instruct generation -> judge -> reject-sampling filter
             -> continued fine-tuning from the MTL checkpoint -> evaluate (base, MTL, ReSet)
             -> register (challenger; champion when the gate passes)

With select.rounds > 1 the rounds are unrolled: round k (tasks generate-r<k>, judge-r<k>,
select-r<k>, finetune-reset-r<k>) samples from round k-1's model and continues its fine-tuning;
`pick-round` scores every round's model on the dev split and the best is the ReSet model.

Each task is a step of reset/config/steps.py (its display name is the step's name; the table says
what it does and which library function its component calls). Parameters: the run form's typed
scalars (reset/config/run_parameters.py) and one dict per config section; `start-run` validates
them once, puts the scalars into the sections and hands the effective sections to the steps. An
exit handler closes the MLflow parent run whatever happens.

`build_pipeline(cluster)` applies a cluster's Kubernetes settings (pipelines/cluster.py);
`cluster.shards` > 1 runs generate + judge and evaluate's answering as parallel shards (`sharded`).
"""


from typing import Any

from kfp import dsl

from components import (
    answer_heldout,
    evaluate_models,
    finetune,
    gather_judged,
    generate_candidates,
    judge_candidates,
    mix_data,
    pick_round,
    register_model,
    select_samples,
    start_run,
)
from pipelines import cluster as k8s
from pipelines.scaffold import pipeline_run
from reset import config
from reset.config import ClusterConfig, PipelineConfig, to_dict
from reset.config.run_parameters import RUN_PARAMETERS, split_run_parameters

PIPELINE_NAME = "reset"
STEP_NAMES = list(config.STEP_NAMES)  # the tasks, in DAG order


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


def build_pipeline(cluster: ClusterConfig | None = None, *, llm_judges: bool = False, shards: int | None = None,
                   rounds: int = 1):
    """Return the ReSet @dsl.pipeline; with `cluster`, its Kubernetes settings are applied
    (`llm_judges`: the compiled config uses an LLM judge, so its Secret is required). `shards`
    (default: cluster.shards, else 1). `rounds` (select.rounds): ReSet rounds unrolled into the DAG."""
    shards = shards or (cluster.shards if cluster is not None else 1)

    def reset_pipeline(
        base_model: str, instruction_data: str, grounded_data: str, mode: str, epochs: float,
        learning_rate: float, samples_per_setting: int, judge_endpoint: str, judge_model: str,
        registered_model_name: str,
        data: dict, model: dict, train: dict, continued_train: dict, generate: dict, judge: dict,
        select: dict, evaluate: dict, register: dict, tracking: dict,
    ):
        with pipeline_run("reset-steps", tracking, cluster, llm_judges) as run:
            step, handoff = run.step, run.handoff

            # 0. the MLflow parent run; the run form's parameters put into the sections
            start = step("start-run", start_run,
                         data=data, model=model, train=train, continued_train=continued_train, generate=generate,
                         judge=judge, select=select, evaluate=evaluate, register=register, tracking=tracking,
                         base_model=base_model, instruction_data=instruction_data, grounded_data=grounded_data,
                         mode=mode, epochs=epochs, learning_rate=learning_rate,
                         samples_per_setting=samples_per_setting, judge_endpoint=judge_endpoint,
                         judge_model=judge_model, registered_model_name=registered_model_name,
                         kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, kfp_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
            c = start.outputs

            # 1. mix IF + CD data: train mixture, dev and test splits, seen-prompt pool, quarantine
            mixed = step("mix", mix_data, data=c["data"], model=c["model"], tracking=tracking)
            seen = mixed.outputs["seen_prompts"]
            splits = {"test_set": mixed.outputs["test_set"], "dev_set": mixed.outputs["dev_set"]}

            # 2. MTL checkpoint: SFT of the base model on the mixture (a LoRA adapter + its base reference)
            mtl = step("finetune-mtl", finetune, train_set=mixed.outputs["train_set"], train=c["train"],
                       model=c["model"], tracking=tracking, stage="mtl", **handoff)

            def sample_and_judge(model_ckpt, k: int):
                """3. self-instruct: N samples per seen prompt over the decoding grid (round k: from
                the model of round k-1); 4. judge: instruction following, faithfulness, task."""
                r = {} if k == 1 else {"round_number": k}
                gen_in = {"mtl_model": model_ckpt, "seen_prompts": seen, "tracking": tracking, **r}
                if shards > 1:
                    with sharded(shards, _round("generate-shards", k)) as n:
                        gen = step(_round("generate", k), generate_candidates, **gen_in,
                                   sections=start.outputs["sections"], shard=n, shards=shards)
                        judged = step(_round("judge", k), judge_candidates, seen_prompts=seen,
                                      candidates=gen.outputs["candidates"], tracking=tracking,
                                      sections=start.outputs["sections"], shard=n, shards=shards, **r)
                    gathered = step(_round("gather", k), gather_judged, seen_prompts=seen,
                                    shard_candidates=dsl.Collected(gen.outputs["candidates"]),
                                    shard_judgments=dsl.Collected(judged.outputs["judgments"]))
                    return gathered.outputs["candidates"], gathered.outputs["judgments"]
                gen = step(_round("generate", k), generate_candidates, **gen_in, generate=c["generate"],
                           model=c["model"])
                judged = step(_round("judge", k), judge_candidates, seen_prompts=seen,
                              candidates=gen.outputs["candidates"], tracking=tracking, judge=c["judge"], **r)
                return gen.outputs["candidates"], judged.outputs["judgments"]

            # 3.-6. each ReSet round (select.rounds; the paper's is one): sample, judge, reject sampling
            # (best per prompt, or ReSet-S's stricter set), continued fine-tuning from the last model
            start_from, round_models, chosen = mtl, {}, None
            for k in range(1, rounds + 1):
                candidates, judgments = sample_and_judge(start_from.outputs["checkpoint"], k)
                picked = step(_round("select", k), select_samples, seen_prompts=seen, candidates=candidates,
                              judgments=judgments, select=c["select"], model=c["model"], tracking=tracking,
                              **({} if k == 1 else {"round_number": k}))
                chosen = chosen or picked  # the keep rates in the report: the first round's
                start_from = step(_round("finetune-reset", k), finetune, train_set=picked.outputs["selected_set"],
                                  train=c["continued_train"], model=c["model"], tracking=tracking,
                                  stage=_round("reset", k), section="continued_train",
                                  start_model=start_from.outputs["checkpoint"], **handoff)
                round_models[f"round_{k}"] = start_from.outputs["checkpoint"]
            reset_model = start_from.outputs["checkpoint"]
            if rounds > 1:  # every round's model on the dev split: the best is the ReSet model
                pick = step("pick-round", pick_round, dev_set=splits["dev_set"], evaluate=c["evaluate"],
                            model=c["model"], judge=c["judge"], tracking=tracking, **round_models)
                reset_model = pick.outputs["checkpoint"]

            # 7. evaluate base, MTL and ReSet on the test split (both axes); the gate
            models = {"mtl": mtl.outputs["checkpoint"], "reset": reset_model}
            sections = {"evaluate": c["evaluate"], "model": c["model"], "judge": c["judge"],
                        "register": c["register"], "tracking": tracking}
            shard_answers = {}
            if shards > 1:  # answers per contiguous piece of the test split; the statistics on them all
                with sharded(shards, "answer-shards") as k:
                    ans = step("answer", answer_heldout, **splits, mtl_model=models["mtl"],
                               reset_model=models["reset"], tracking=tracking, sections=start.outputs["sections"],
                               shard=k, shards=shards)
                shard_answers = {"shard_answers": dsl.Collected(ans.outputs["answers"])}
            ev = step("evaluate", evaluate_models, **splits, **sections, **models, **shard_answers,
                      reset_selection=chosen.outputs["selection_report"])

            # 8. register the ReSet model as challenger (champion when the gate passed)
            run.last = step("register", register_model, reset_model=reset_model,
                            scores=ev.outputs["scores"], register=c["register"], evaluate=c["evaluate"],
                            model=c["model"], tracking=tracking)

    reset_pipeline.__doc__ = _docstring()
    return dsl.pipeline(name=PIPELINE_NAME, description=_docstring().split("\n")[0])(reset_pipeline)


def _round(name: str, k: int) -> str:
    """A task's name in ReSet round k: its own in the first round, `<name>-r<k>` after."""
    return name if k == 1 else f"{name}-r{k}"


def sharded(shards: int, name: str) -> dsl.ParallelFor:
    """A ParallelFor over the shard numbers. The tasks inside take the run's sections from
    start-run's `sections` artifact, not as parameters: kfp.local replaces a loop's task-output
    parameters by the loop item (components/__init__.py)."""
    return dsl.ParallelFor(items=list(range(shards)), name=name)


def pipeline_arguments(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline's parameters: the run form's typed scalars (their keys taken out of the
    sections) and one plain dict per config section."""
    sections, scalars = split_run_parameters({name: to_dict(getattr(cfg, name)) for name in config.SECTIONS})
    return {**scalars, **sections}


def build_for(cfg: PipelineConfig, local: bool = False):
    """The pipeline a config compiles to: its cluster settings (none for a local run) and shards."""
    return build_pipeline(None if local else cfg.cluster, llm_judges=k8s.uses_llm_judges(cfg),
                          shards=cfg.cluster.shards, rounds=cfg.select.rounds)
