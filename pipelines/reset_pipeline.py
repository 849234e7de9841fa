"""The ReSet pipeline, read top to bottom like the method:

    mix data -> fine-tune (MTL) -> self-instruct generation -> judge -> reject-sampling filter
             -> continued fine-tuning from the MTL checkpoint -> evaluate (base, MTL, ReSet)
             -> register (challenger; champion when the gate passes)

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


def build_pipeline(cluster: ClusterConfig | None = None, *, llm_judges: bool = False, shards: int | None = None):
    """Return the ReSet @dsl.pipeline; with `cluster`, its Kubernetes settings are applied
    (`llm_judges`: the compiled config uses an LLM judge, so its Secret is required). `shards`
    (default: cluster.shards, else 1)."""
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

            # 3. self-instruct: N samples per seen prompt over the decoding grid
            # 4. judge: instruction following, faithfulness, task -> weighted score
            gen_in = {"mtl_model": mtl.outputs["checkpoint"], "seen_prompts": seen, "tracking": tracking}
            if shards > 1:
                with sharded(shards, "generate-shards") as k:
                    gen = step("generate", generate_candidates, **gen_in, sections=start.outputs["sections"],
                               shard=k, shards=shards)
                    judged = step("judge", judge_candidates, seen_prompts=seen, candidates=gen.outputs["candidates"],
                                  tracking=tracking, sections=start.outputs["sections"], shard=k, shards=shards)
                gathered = step("gather", gather_judged, seen_prompts=seen,
                                shard_candidates=dsl.Collected(gen.outputs["candidates"]),
                                shard_judgments=dsl.Collected(judged.outputs["judgments"]))
                candidates, judgments = gathered.outputs["candidates"], gathered.outputs["judgments"]
            else:
                gen = step("generate", generate_candidates, **gen_in, generate=c["generate"], model=c["model"])
                judged = step("judge", judge_candidates, seen_prompts=seen, candidates=gen.outputs["candidates"],
                              tracking=tracking, judge=c["judge"])
                candidates, judgments = gen.outputs["candidates"], judged.outputs["judgments"]

            # 5. reject sampling: best per prompt (ReSet) or the stricter top set (ReSet-S)
            chosen = step("select", select_samples, seen_prompts=seen, candidates=candidates, judgments=judgments,
                          select=c["select"], tracking=tracking)

            # 6. continued fine-tuning from the MTL checkpoint on the selected set
            rs = step("finetune-reset", finetune, train_set=chosen.outputs["selected_set"], train=c["continued_train"],
                      model=c["model"], tracking=tracking, stage="reset", section="continued_train",
                      start_model=mtl.outputs["checkpoint"], **handoff)

            # 7. evaluate base, MTL and ReSet on the test split (both axes); the gate
            models = {"mtl": mtl.outputs["checkpoint"], "reset": rs.outputs["checkpoint"]}
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
            run.last = step("register", register_model, reset_model=rs.outputs["checkpoint"],
                            scores=ev.outputs["scores"], register=c["register"], evaluate=c["evaluate"],
                            model=c["model"], tracking=tracking)

    reset_pipeline.__doc__ = _docstring()
    return dsl.pipeline(name=PIPELINE_NAME, description=_docstring().split("\n")[0])(reset_pipeline)


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
                          shards=cfg.cluster.shards)
