"""The paper's experiment as one pipeline: seven arms and a control from the ReSet pipeline's components.

    mix ─┬─ finetune if-only ── finetune if-cd
         ├─ finetune cd-only ── finetune cd-if
         └─ finetune mtl ─┬─ generate + judge (shared) ─┬─ select (reset)   ── finetune reset ─┐
                          │                             └─ select (reset-s) ── finetune reset-s │
                          └─ control data (ReSet's prompts, references) ── finetune control     │
         reset-2r (ReSet, 2 rounds): generate + judge from ReSet's model ── select (round 2) ─┘
                   ── finetune reset-2r ── pick-round: the better of ReSet and round 2 on dev
       the base model's answers, scored once ── evaluate every arm on the test split, per seed
       ── report across seeds (pooled: reset.experiments.report)

Read it like reset_pipeline.py: the arms are config overlays (reset.experiments.arms), decided when
the pipeline is built from a config (`experiment.arms`, `.overlays`); each arm's sections are
compiled in as constants. Shared work runs once: the mixture; the base model's answers; per seed
the MTL checkpoint that feeds ReSet, ReSet-S and the control, and one generation and one judging
that ReSet and ReSet-S share (ReSet's candidates are the part of ReSet-S's larger sample its own
plan draws). Seeds run as a ParallelFor over the `seeds` parameter (the run form; default
experiment.seeds) with `experiment.parallelism` seeds at once; the trade-off arms (IF-only, CD-only,
CD->IF, IF->CD: from the base model) in a second ParallelFor over `tradeoff_seeds` (the first
experiment.tradeoff_seed_count seeds), with their own evaluation; the report collects both. The
same cluster settings as the ReSet pipeline (pipelines/cluster.py): locally through kfp.local
(`python -m pipelines experiment`), on a cluster through compile / upload / submit / schedule.
"""


from typing import Any

from kfp import dsl

from components import (
    answer_heldout,
    control_data,
    evaluate_models,
    experiment_report,
    finetune,
    generate_candidates,
    judge_candidates,
    mix_data,
    pick_round,
    select_samples,
    start_run,
)
from pipelines import cluster as k8s
from pipelines.scaffold import pipeline_run
from reset.config import SECTIONS, ClusterConfig, PipelineConfig, to_dict
from reset.config.run_parameters import split_run_parameters
from reset.experiments.arms import ARMS, ROUNDS, TRADEOFF_ARMS, arm_config, needed, shared_generation

PIPELINE_NAME = "reset-experiment"


def _sections(cfg: PipelineConfig) -> dict[str, dict]:
    return {name: to_dict(getattr(cfg, name)) for name in SECTIONS}


def build_experiment(cfg: PipelineConfig, cluster: ClusterConfig | None = None, *, llm_judges: bool = False):
    """The experiment pipeline for `cfg.experiment` (arms, overlays) on top of `cfg`; with `cluster`,
    its Kubernetes settings are applied."""
    exp = cfg.experiment
    order = needed(exp.arms)
    evaluated = [a for a in order if a in exp.arms or a == exp.reference]
    base = _sections(cfg)
    sections, form = split_run_parameters({k: v for k, v in base.items() if k != "tracking"})
    arm_cfgs = {arm: arm_config(cfg, arm, exp.overlays) for arm in order}
    arm_sections = {arm: _sections(c) for arm, c in arm_cfgs.items()}
    sharing = shared_generation(arm_cfgs)  # ReSet and ReSet-S: one generation and one judging per seed
    # the trade-off arms (from the base model) in a loop of their own, over the first experiment.tradeoff_seed_count
    # seeds; MTL and what continues it over every seed; the report pairs each arm with MTL of the same seed
    split = exp.reference not in TRADEOFF_ARMS
    if not split and exp.tradeoff_seed_count is not None:
        raise ValueError(f"experiment.tradeoff_seed_count: the reference arm {exp.reference!r} is itself a trade-off "
                         "arm; leave tradeoff_seed_count out to run every arm on every seed")
    tradeoff = [a for a in order if split and a in TRADEOFF_ARMS]
    deciding = [a for a in order if a not in tradeoff]

    def experiment_pipeline(
        tracking: dict,
        seeds: list = list(exp.seeds),  # noqa: B006 - the form's default
        tradeoff_seeds: list = exp.tradeoff_seeds(),  # noqa: B006
    ):
        with pipeline_run("experiment-steps", tracking, cluster, llm_judges) as run:
            step = run.step
            start = step("start-run", start_run, tracking=tracking, kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                         kfp_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **sections, **form)
            mixed = step("mix", mix_data, data=base["data"], model=base["model"], tracking=tracking).after(start)
            splits = {"test_set": mixed.outputs["test_set"], "dev_set": mixed.outputs["dev_set"]}
            judging = {"evaluate": base["evaluate"], "model": base["model"], "judge": base["judge"]}
            # the base model has no seed: its answers are scored once for every seed
            base_ans = step("answer-base", answer_heldout, **splits, **judging, tracking=tracking,
                            with_register=False, include_base=True)
            evaluations = []
            # on a cluster experiment.parallelism seeds at once; locally one after the other (kfp.local would
            # run two at once, each step then sharing the machine's cores with another's); locally the two
            # loops run one after the other too (kfp.local runs a DAG's tasks in turn)
            for name, items, arms in (("seeds", seeds, deciding), ("tradeoff-seeds", tradeoff_seeds, tradeoff)):
                if not arms:
                    continue
                with dsl.ParallelFor(items, name=name, parallelism=exp.parallelism if cluster else 1) as seed:
                    ckpt = _arms_of_one_seed(run, arms, seed, mixed, splits, arm_sections, sharing, tracking)
                    reports = {
                        f"{a.replace('-', '_')}_selection": ckpt[f"{a}:report"]
                        for a in ("reset", "reset-s")
                        if f"{a}:report" in ckpt
                    }
                    ev = step(
                        "evaluate" if name == "seeds" else "evaluate-tradeoff",
                        evaluate_models,
                        **splits,
                        **judging,
                        register=base["register"],
                        tracking=tracking,
                        with_register=False,
                        reference=exp.reference,
                        seed=seed,
                        base_answers=base_ans.outputs["answers"],
                        **reports,
                        **{a.replace("-", "_"): ckpt[a] for a in arms if a in evaluated},
                    )
                    evaluations.append(ev)
            more = {"tradeoff_scores": dsl.Collected(evaluations[1].outputs["scores"])} if len(evaluations) > 1 else {}
            run.last = step("report", experiment_report, scores=dsl.Collected(evaluations[0].outputs["scores"]),
                            tracking=tracking, **more)

    experiment_pipeline.__doc__ = f"""The paper's seven arms and a control (reset.experiments): {", ".join(order)}.

    Args:
        tracking: The tracking config section (JSON): the MLflow server and experiment.
        seeds: Training and sampling seeds (a JSON list); MTL and the arms that continue it run once per seed, and
            the report pools them.
        tradeoff_seeds: The trade-off arms' seeds (if-only, cd-only, cd-if, if-cd), some of `seeds` (a JSON list;
            an arm on a seed MTL did not run on is not compared).
    """
    return dsl.pipeline(
        name=PIPELINE_NAME, description="ReSet: the paper's arms and a control, with a report across seeds"
    )(experiment_pipeline)


def _arms_of_one_seed(run, arms: list[str], seed, mixed, splits: dict, arm_sections: dict, sharing: dict,
                      tracking) -> dict[str, Any]:
    """One seed's arms, in dependency order (inside a ParallelFor over seeds): arm -> its checkpoint
    (and <arm>:selected / <arm>:report for ReSet and ReSet-S)."""
    step, handoff = run.step, run.handoff
    seen = mixed.outputs["seen_prompts"]
    ckpt: dict[str, Any] = {}
    judged_by: dict[str, tuple[Any, Any]] = {}
    for arm in arms:
        s = arm_sections[arm]
        start_from, data = ARMS[arm]
        if data in ("instruction", "grounded", "all"):
            train_set, kinds, section = (
                mixed.outputs["train_set"],
                ([] if data == "all" else [data]),
                "train",
            )
        elif data == "selected":  # ReSet / ReSet-S: sample from MTL, judge, reject-sample
            later = {"round_number": ROUNDS[arm]} if arm in ROUNDS else {}  # ReSet, 2 rounds
            lead, union = sharing[arm]
            shared = [a for a, (g, _) in sharing.items() if g == lead]
            if lead not in judged_by:  # one generation and one judging for the arms that share it
                name = "+".join(shared)
                gen = step(
                    f"generate-{name}",
                    generate_candidates,
                    mtl_model=ckpt[start_from],
                    seen_prompts=seen,
                    tracking=tracking,
                    generate=union,
                    model=s["model"],
                    seed=seed,
                    **later,
                )
                judged = step(
                    f"judge-{name}",
                    judge_candidates,
                    seen_prompts=seen,
                    candidates=gen.outputs["candidates"],
                    tracking=tracking,
                    judge=s["judge"],
                    **later,
                )
                judged_by[lead] = (gen.outputs["candidates"], judged.outputs["judgments"])
            cands, judgments = judged_by[lead]
            chosen = step(
                f"select-{arm}",
                select_samples,
                seen_prompts=seen,
                candidates=cands,
                judgments=judgments,
                select=s["select"],
                model=s["model"],
                tracking=tracking,
                generate=s["generate"] if len(shared) > 1 else {},
                **later,
            )
            ckpt[f"{arm}:selected"] = chosen.outputs["selected_set"]
            ckpt[f"{arm}:report"] = chosen.outputs["selection_report"]
            train_set, kinds, section = chosen.outputs["selected_set"], [], "continued_train"
        else:  # the control: the references of the prompts ReSet kept, the same steps
            ctl = step("control-data", control_data, selected_set=ckpt["reset:selected"], seen_prompts=seen)
            train_set, kinds, section = ctl.outputs["control_set"], [], "continued_train"
        extra = {} if start_from == "base" else {"start_model": ckpt[start_from]}
        ft = step(
            f"finetune-{arm}",
            finetune,
            train_set=train_set,
            train=s[section],
            model=s["model"],
            tracking=tracking,
            stage=arm,
            kinds=kinds,
            section=section,
            seed=seed,
            **extra,
            **handoff,
        )
        ckpt[arm] = ft.outputs["checkpoint"]
        if arm in ROUNDS:  # the better of the arm it continues and its own round, on dev
            pick = step(f"pick-round-{arm}", pick_round, dev_set=splits["dev_set"], tracking=tracking,
                        evaluate=s["evaluate"], model=s["model"], judge=s["judge"],
                        **{f"round_{ROUNDS[arm] - 1}": ckpt[start_from],
                           f"round_{ROUNDS[arm]}": ft.outputs["checkpoint"]})
            ckpt[arm] = pick.outputs["checkpoint"]
    return ckpt


def experiment_arguments(cfg: PipelineConfig) -> dict[str, Any]:
    """The experiment pipeline's parameters from a config: tracking and the seeds."""
    exp = cfg.experiment
    return {"tracking": to_dict(cfg.tracking), "seeds": list(exp.seeds),
            "tradeoff_seeds": exp.tradeoff_seeds()}


def build_for(cfg: PipelineConfig, local: bool = False):
    """The experiment pipeline a config compiles to, with its cluster settings (none locally)."""
    return build_experiment(cfg, None if local else cfg.cluster, llm_judges=k8s.uses_llm_judges(cfg))
