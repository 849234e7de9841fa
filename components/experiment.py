"""Components of the paper's experiment (pipelines/experiment_pipeline.py): any arm's fine-tuning,
the control's data, every arm's evaluation in one step, and the report across seeds."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def finetune_arm(
    train_set: Input[Dataset], train: dict, model: dict, tracking: dict, stage: str, kinds: list, section: str,
    seed: int, checkpoint: Output[Model], start_model: Optional[Input[Model]] = None,
) -> dict:
    """Fine-tune one arm with `seed`: from the base model (no start_model) or from another arm's
    checkpoint, on the training set (only examples of `kinds` when given)."""
    from reset import steps

    m = steps.finetune(start_model.path if start_model is not None else None, train_set.path, {**train, "seed": seed},
                       model, tracking, "", stage=stage, out_dir=checkpoint.path, kinds=kinds, section=section)
    checkpoint.metadata.update({"stage": stage, "final_loss": m["final_loss"]})
    return {k: v for k, v in m.items() if k != "loss_history"}


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def generate_arm(
    mtl_model: Input[Model], seen_prompts: Input[Dataset], generate: dict, model: dict, tracking: dict, seed: int,
    candidates: Output[Dataset],
) -> dict:
    """Self-instruct sampling for one arm (ReSet or ReSet-S) with `seed`."""
    from reset import steps

    return steps.generate(mtl_model.path, seen_prompts.path, {**generate, "seed": seed}, model, tracking, "",
                          out_candidates=candidates.path)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def control_data(selected_set: Input[Dataset], seen_prompts: Input[Dataset], control_set: Output[Dataset]) -> int:
    """The control's data: the reference answers of the prompts ReSet kept."""
    from reset import steps

    return steps.control_set(selected_set.path, seen_prompts.path, out_path=control_set.path)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def answer_base(test_set: Input[Dataset], dev_set: Input[Dataset], evaluate: dict, model: dict, judge: dict,
                tracking: dict, answers: Output[Dataset]) -> dict:
    """The base model's scored answers on the held-out split, once for every seed (it has no seed)."""
    from reset import steps

    return steps.evaluate_answers({}, test_set.path, evaluate, model, judge, tracking, "", out_rows=answers.path,
                                  include_base=True, dev_path=dev_set.path)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_arms(
    test_set: Input[Dataset], dev_set: Input[Dataset], evaluate: dict, model: dict, judge: dict, tracking: dict,
    reference: str, seed: int, scores: Output[Artifact], report: Output[Markdown], report_html: Output[HTML],
    samples: Output[Dataset], base_answers: Optional[Input[Dataset]] = None,
    if_only: Optional[Input[Model]] = None, cd_only: Optional[Input[Model]] = None,
    cd_if: Optional[Input[Model]] = None, if_cd: Optional[Input[Model]] = None, mtl: Optional[Input[Model]] = None,
    reset: Optional[Input[Model]] = None, reset_s: Optional[Input[Model]] = None,
    control: Optional[Input[Model]] = None, reset_selection: Optional[Input[Artifact]] = None,
    reset_s_selection: Optional[Input[Artifact]] = None,
) -> list:
    """Every arm given on the held-out split, from one engine, with the base model's answers scored
    once (`base_answers`); the verdicts and the selections' keep rates."""
    from reset import steps

    given = {"if-only": if_only, "cd-only": cd_only, "cd-if": cd_if, "if-cd": if_cd, "mtl": mtl, "reset": reset,
             "reset-s": reset_s, "control": control}
    models = {name: art.path for name, art in given.items() if art is not None}
    keep = {a: art.path for a, art in (("reset", reset_selection), ("reset-s", reset_s_selection)) if art is not None}
    payload = steps.evaluate(models, test_set.path, evaluate, model, judge, tracking, "", out_metrics=scores.path,
                             out_report=report.path, out_rows=samples.path, out_html=report_html.path,
                             include_base=base_answers is None, reference=reference, seed=seed,
                             dev_path=dev_set.path, keep_rates_paths=keep,
                             extra_rows_paths={"base": base_answers.path} if base_answers is not None else None)
    return payload["verdicts"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def experiment_report(scores: Input[List[Artifact]], tracking: dict, report: Output[Markdown],
                      summary: Output[Artifact]) -> str:
    """The arms across seeds: per-seed figures, mean and spread, paired verdicts per seed."""
    from reset import steps

    data = steps.experiment_report([a.path for a in scores], tracking, out_report=report.path, out_json=summary.path)
    return "\n".join(v for vs in data["verdicts"].values() for v in vs[:1])
