"""Evaluation: every model's answers to the held-out split (or one shard of them), and the
comparison with its decision: the report, the gate, the verdicts. One component serves the ReSet
pipeline (MTL and ReSet, sharded or not) and the experiment (every arm, the base answered once)."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def answer_heldout(
    test_set: Input[Dataset], dev_set: Input[Dataset], tracking: dict, answers: Output[Dataset],
    mtl_model: Optional[Input[Model]] = None, reset_model: Optional[Input[Model]] = None,
    evaluate: dict = {}, model: dict = {}, judge: dict = {}, register: dict = {},  # noqa: B006
    sections: Optional[Input[Artifact]] = None, shard: int = 0, shards: int = 1, with_register: bool = True,
    include_base: bool = True,
) -> dict:
    """Scored answers of the models given (and the base model, and the champion with `with_register`)
    to shard `shard` of `shards` of the held-out split; the experiment's base answers (no models)."""
    from reset import steps

    cfg = steps.config(sections.path if sections is not None else "", tracking=tracking, evaluate=evaluate,
                       model=model, judge=judge, register=register)
    models = {name: art.path for name, art in (("mtl", mtl_model), ("reset", reset_model)) if art is not None}
    stats = steps.evaluate_answers(models, test_set.path, cfg, out_rows=answers.path, with_register=with_register,
                                   include_base=include_base, shard=shard, shards=shards, dev_path=dev_set.path)
    answers.metadata["rows"] = stats["rows"]
    return stats


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_models(
    test_set: Input[Dataset], dev_set: Input[Dataset], evaluate: dict, model: dict, judge: dict, register: dict,
    tracking: dict, scores: Output[Artifact], metrics: Output[Metrics], report: Output[Markdown],
    report_html: Output[HTML], samples: Output[Dataset],
    mtl: Optional[Input[Model]] = None, reset: Optional[Input[Model]] = None, if_only: Optional[Input[Model]] = None,
    cd_only: Optional[Input[Model]] = None, cd_if: Optional[Input[Model]] = None, if_cd: Optional[Input[Model]] = None,
    reset_s: Optional[Input[Model]] = None, control: Optional[Input[Model]] = None,
    reset_2r: Optional[Input[Model]] = None,
    reset_selection: Optional[Input[Artifact]] = None, reset_s_selection: Optional[Input[Artifact]] = None,
    shard_answers: Optional[Input[List[Dataset]]] = None, base_answers: Optional[Input[Dataset]] = None,
    with_register: bool = True, reference: str = "mtl", seed: int = -1,
) -> dict:
    """The arms given on the held-out split from one engine (or the shards' answers, gathered), and
    the decision; the figures also as KFP metrics (the run compare view), the two axes with their
    95% intervals and each arm's paired difference and p."""
    from reset import steps

    cfg = steps.config(evaluate=evaluate, model=model, judge=judge, register=register, tracking=tracking)
    given = {"mtl": mtl, "reset": reset, "if-only": if_only, "cd-only": cd_only, "cd-if": cd_if, "if-cd": if_cd,
             "reset-s": reset_s, "control": control, "reset-2r": reset_2r}
    keep = {a: art.path for a, art in (("reset", reset_selection), ("reset-s", reset_s_selection)) if art is not None}
    payload = steps.evaluate({n: art.path for n, art in given.items() if art is not None}, test_set.path, cfg,
                             out_metrics=scores.path, out_report=report.path, out_rows=samples.path,
                             out_html=report_html.path, with_register=with_register,
                             include_base=base_answers is None, reference=reference,
                             seed=seed if seed >= 0 else None, dev_path=dev_set.path, keep_rates_paths=keep,
                             rows_paths=[a.path for a in shard_answers] if shard_answers else (),
                             extra_rows_paths={"base": base_answers.path} if base_answers is not None else None)
    for name, values in payload["metrics"].items():
        for key, value in values.items():
            metrics.log_metric(f"{name}.{key}", value)
    for key, value in payload.get("intervals", {}).items():  # <arm>.<axis>.low / .high, <arm>.vs_mtl.<axis>.p
        metrics.log_metric(key, value)
    return {"verdicts": payload["verdicts"], "gates": payload["gates"], "decision": payload.get("decision", "")}


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def pick_round(
    dev_set: Input[Dataset], evaluate: dict, model: dict, judge: dict, tracking: dict, checkpoint: Output[Model],
    rounds_report: Output[Markdown], metrics: Output[Metrics], round_1: Optional[Input[Model]] = None,
    round_2: Optional[Input[Model]] = None, round_3: Optional[Input[Model]] = None,
    round_4: Optional[Input[Model]] = None,
) -> dict:
    """ReSet rounds (select.rounds; the DAG unrolls at most 4) scored on the dev split; the best by
    dev, copied, is the ReSet model the test evaluation and the registry get."""
    from reset import steps

    cfg = steps.config(evaluate=evaluate, model=model, judge=judge, tracking=tracking)
    given = {k: art.path for k, art in enumerate((round_1, round_2, round_3, round_4), start=1) if art is not None}
    out = steps.pick_round(given, dev_set.path, cfg, out_checkpoint=checkpoint.path, out_report=rounds_report.path)
    checkpoint.metadata["round"] = out["best_round"]
    for k, v in out["dev_scores"].items():
        metrics.log_metric(f"round_{k}.dev_score", v)
    return out
