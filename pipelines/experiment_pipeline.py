"""The paper's experiment as one pipeline: seven arms and a control from the same components.

    mix ─┬─ finetune if-only ── finetune if-cd
         ├─ finetune cd-only ── finetune cd-if
         └─ finetune mtl ─┬─ generate ── judge ── select (reset)   ── finetune reset
                          ├─ generate ── judge ── select (reset-s) ── finetune reset-s
                          └─ control data (ReSet's prompts, references) ── finetune control
       the base model's answers, scored once ── evaluate every arm on the test split, per seed
       ── report across seeds (pooled: reset.experiments.report)

Read it like reset_pipeline.py: the arms are config overlays (reset.experiments.arms), decided
when the pipeline is built from a config (`experiment.arms`, `.seeds`, `.overlays`); shared work
runs once (the mixture; the base model's answers; per seed the MTL checkpoint that feeds ReSet,
ReSet-S and the control, and one generation and judging that ReSet and ReSet-S share: ReSet's
candidates are the part of ReSet-S's larger sample its own plan draws, reset.experiments.arms).
Seeds run as a ParallelFor (each seed trains and samples with its own seed, on the same split and
held-out set) and the report collects them. Each arm's config sections are compiled in as
constants, so the run form only holds tracking. Runs locally through kfp.local like the ReSet
pipeline (`python -m pipelines experiment --config configs/experiment.yaml`).
"""


from kfp import dsl

from components import finish_run, judge_candidates, mix_data, select_samples, start_run
from components.experiment import (
    answer_base,
    control_data,
    evaluate_arms,
    experiment_report,
    finetune_arm,
    generate_arm,
)
from reset.config import SECTIONS, PipelineConfig, to_dict
from reset.config.run_parameters import split_run_parameters
from reset.experiments.arms import ARMS, arm_config, needed, shared_generation

PIPELINE_NAME = "reset-experiment"


def _sections(cfg: PipelineConfig) -> dict[str, dict]:
    return {name: to_dict(getattr(cfg, name)) for name in SECTIONS}


def build_experiment(cfg: PipelineConfig):
    """The experiment pipeline for `cfg.experiment` (arms, seeds, overlays) on top of `cfg`."""
    exp = cfg.experiment
    order = needed(exp.arms)
    evaluated = [a for a in order if a in exp.arms or a == exp.reference]
    base = _sections(cfg)
    sections, form = split_run_parameters({k: v for k, v in base.items() if k != "tracking"})
    arm_cfgs = {arm: arm_config(cfg, arm, exp.overlays) for arm in order}
    arm_sections = {arm: _sections(c) for arm, c in arm_cfgs.items()}
    sharing = shared_generation(arm_cfgs)  # ReSet and ReSet-S: one generation and one judging per seed

    def experiment_pipeline(tracking: dict):
        finish = finish_run(tracking=tracking, kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        finish.set_display_name("finish-run").set_caching_options(False)
        with dsl.ExitHandler(finish, name="experiment-steps"):
            start = start_run(tracking=tracking, kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                              kfp_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **sections, **form)
            start.set_display_name("start-run").set_caching_options(False)
            mixed = mix_data(data=base["data"], model=base["model"], tracking=tracking).set_display_name("mix")
            mixed.after(start)
            seen = mixed.outputs["seen_prompts"]
            splits = {"test_set": mixed.outputs["test_set"], "dev_set": mixed.outputs["dev_set"]}
            # the base model has no seed: its answers are scored once for every seed
            base_ans = answer_base(**splits, evaluate=base["evaluate"], model=base["model"], judge=base["judge"],
                                   tracking=tracking).set_display_name("answer-base")
            with dsl.ParallelFor(list(exp.seeds), name="seeds") as seed:
                ckpt: dict[str, object] = {}
                judged_by: dict[str, tuple[object, object]] = {}
                for arm in order:
                    s = arm_sections[arm]
                    start_from, data = ARMS[arm]
                    if data in ("instruction", "grounded", "all"):
                        train_set, kinds, section = mixed.outputs["train_set"], ([] if data == "all" else [data]), "train"
                    elif data == "selected":  # ReSet / ReSet-S: sample from MTL, judge, reject-sample
                        lead, union = sharing[arm]
                        shared = [a for a, (g, _) in sharing.items() if g == lead]
                        if lead not in judged_by:  # one generation and one judging for the arms that share it
                            gen = generate_arm(mtl_model=ckpt[start_from], seen_prompts=seen, generate=union,
                                               model=s["model"], tracking=tracking, seed=seed)
                            judged = judge_candidates(seen_prompts=seen, candidates=gen.outputs["candidates"],
                                                      judge=s["judge"], tracking=tracking)
                            name = "+".join(shared)
                            gen.set_display_name(f"generate-{name}")
                            judged.set_display_name(f"judge-{name}")
                            judged_by[lead] = (gen.outputs["candidates"], judged.outputs["judgments"])
                        cands, judgments = judged_by[lead]
                        chosen = select_samples(seen_prompts=seen, candidates=cands, judgments=judgments,
                                                select=s["select"], tracking=tracking,
                                                generate=s["generate"] if len(shared) > 1 else {})
                        chosen.set_display_name(f"select-{arm}")
                        ckpt[f"{arm}:selected"] = chosen.outputs["selected_set"]
                        ckpt[f"{arm}:report"] = chosen.outputs["selection_report"]
                        train_set, kinds, section = chosen.outputs["selected_set"], [], "continued_train"
                    else:  # the control: the references of the prompts ReSet kept, the same steps
                        ctl = control_data(selected_set=ckpt["reset:selected"], seen_prompts=seen)
                        ctl.set_display_name("control-data")
                        train_set, kinds, section = ctl.outputs["control_set"], [], "continued_train"
                    extra = {} if start_from == "base" else {"start_model": ckpt[start_from]}
                    ft = finetune_arm(train_set=train_set, train=s[section], model=s["model"], tracking=tracking,
                                      stage=arm, kinds=kinds, section=section, seed=seed, **extra)
                    ft.set_display_name(f"finetune-{arm}")
                    ckpt[arm] = ft.outputs["checkpoint"]
                reports = {f"{a.replace('-', '_')}_selection": ckpt[f"{a}:report"] for a in ("reset", "reset-s")
                           if f"{a}:report" in ckpt}
                ev = evaluate_arms(**splits, evaluate=base["evaluate"], model=base["model"], judge=base["judge"],
                                   tracking=tracking, reference=exp.reference, seed=seed,
                                   base_answers=base_ans.outputs["answers"], **reports,
                                   **{a.replace("-", "_"): ckpt[a] for a in evaluated})
                ev.set_display_name("evaluate")
            report = experiment_report(scores=dsl.Collected(ev.outputs["scores"]), tracking=tracking)
            report.set_display_name("report").set_caching_options(False)

    experiment_pipeline.__doc__ = "The paper's seven arms and a control (reset.experiments)."
    return dsl.pipeline(name=PIPELINE_NAME, description="ReSet: the paper's arms and a control, with a report "
                                                        "across seeds")(experiment_pipeline)
