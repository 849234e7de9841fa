"""The paper's experiment as one pipeline: seven arms and a control from the same components.

    mix ─┬─ finetune if-only ── finetune if-cd
         ├─ finetune cd-only ── finetune cd-if
         └─ finetune mtl ─┬─ generate ── judge ── select (reset)   ── finetune reset
                          ├─ generate ── judge ── select (reset-s) ── finetune reset-s
                          └─ control data (ReSet's prompts, references) ── finetune control
       evaluate every arm (+ base) on the held-out split, per seed ── report across seeds

Read it like reset_pipeline.py: the arms are config overlays (reset.experiments.arms), decided
when the pipeline is built from a config (`experiment.arms`, `.seeds`, `.overlays`); shared work
runs once (the mixture; per seed the MTL checkpoint that feeds ReSet, ReSet-S and the control).
Seeds run as a ParallelFor (each seed trains and samples with its own seed, on the same split and
held-out set) and the report collects them. Each arm's config sections are compiled in as
constants, so the run form only holds tracking. Runs locally through kfp.local like the ReSet
pipeline (`python -m pipelines experiment --config configs/experiment.yaml`).
"""


from kfp import dsl

from components import finish_run, judge_candidates, mix_data, select_samples, start_run
from components.experiment import control_data, evaluate_arms, experiment_report, finetune_arm, generate_arm
from reset.config import SECTIONS, PipelineConfig, to_dict
from reset.config.run_parameters import split_run_parameters
from reset.experiments.arms import ARMS, arm_config, needed

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
    arm_sections = {arm: _sections(arm_config(cfg, arm, exp.overlays)) for arm in order}

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
            with dsl.ParallelFor(list(exp.seeds), name="seeds") as seed:
                ckpt: dict[str, object] = {}
                for arm in order:
                    s = arm_sections[arm]
                    start_from, data = ARMS[arm]
                    if data in ("instruction", "grounded", "all"):
                        train_set, kinds, section = mixed.outputs["train_set"], ([] if data == "all" else [data]), "train"
                    elif data == "selected":  # ReSet / ReSet-S: sample from MTL, judge, reject-sample
                        gen = generate_arm(mtl_model=ckpt["mtl"], seen_prompts=seen, generate=s["generate"],
                                           model=s["model"], tracking=tracking, seed=seed)
                        judged = judge_candidates(seen_prompts=seen, candidates=gen.outputs["candidates"],
                                                  judge=s["judge"], tracking=tracking)
                        chosen = select_samples(seen_prompts=seen, candidates=gen.outputs["candidates"],
                                                judgments=judged.outputs["judgments"], select=s["select"],
                                                tracking=tracking)
                        for t, what in ((gen, "generate"), (judged, "judge"), (chosen, "select")):
                            t.set_display_name(f"{what}-{arm}")
                        ckpt[f"{arm}:selected"] = chosen.outputs["selected_set"]
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
                ev = evaluate_arms(test_set=mixed.outputs["test_set"], dev_set=mixed.outputs["dev_set"], evaluate=base["evaluate"],
                                   model=base["model"], judge=base["judge"], tracking=tracking, include_base=True,
                                   reference=exp.reference, seed=seed,
                                   **{a.replace("-", "_"): ckpt[a] for a in evaluated})
                ev.set_display_name("evaluate")
            report = experiment_report(scores=dsl.Collected(ev.outputs["scores"]), tracking=tracking)
            report.set_display_name("report").set_caching_options(False)

    experiment_pipeline.__doc__ = "The paper's seven arms and a control (reset.experiments)."
    return dsl.pipeline(name=PIPELINE_NAME, description="ReSet: the paper's arms and a control, with a report "
                                                        "across seeds")(experiment_pipeline)
