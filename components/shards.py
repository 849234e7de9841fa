"""The sharded DAG's steps (cluster.shards > 1): generate, judge and answer one shard each inside a
ParallelFor; gather the generate + judge shards; evaluate from the gathered answers. Inside the
loop the sections come from start-run's `sections` artifact (kfp.local 2.17 passes a loop task's
task-output parameters wrongly; artifacts it passes as they are)."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def generate_shard(
    mtl_model: Input[Model], seen_prompts: Input[Dataset], sections: Input[Artifact], tracking: dict, shard: int,
    shards: int, candidates: Output[Dataset],
) -> dict:
    from reset import steps

    cfg = steps.read_sections(sections.path)
    stats = steps.generate(mtl_model.path, seen_prompts.path, cfg["generate"], cfg["model"], tracking, "",
                           out_candidates=candidates.path, shard=shard, shards=shards)
    candidates.metadata["rows"] = stats["candidates"]
    return stats


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def judge_shard(
    seen_prompts: Input[Dataset], candidates: Input[Dataset], sections: Input[Artifact], tracking: dict, shard: int,
    shards: int, judgments: Output[Dataset],
) -> dict:
    from reset import steps

    cfg = steps.read_sections(sections.path)
    stats = steps.judge(seen_prompts.path, candidates.path, cfg["judge"], tracking, "", out_judgments=judgments.path,
                        shard=shard, shards=shards)
    judgments.metadata["rows"] = stats["judgments"]
    return stats


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gather_judged(
    seen_prompts: Input[Dataset], shard_candidates: Input[List[Dataset]], shard_judgments: Input[List[Dataset]],
    candidates: Output[Dataset], judgments: Output[Dataset],
) -> dict:
    from reset import steps

    stats = steps.gather(seen_prompts.path, [a.path for a in shard_candidates], [a.path for a in shard_judgments],
                         out_candidates=candidates.path, out_judgments=judgments.path)
    candidates.metadata["rows"] = stats["candidates"]
    judgments.metadata["rows"] = stats["judgments"]
    return stats


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def answer_heldout(
    mtl_model: Input[Model], reset_model: Input[Model], test_set: Input[Dataset], dev_set: Input[Dataset], sections: Input[Artifact],
    tracking: dict, shard: int, shards: int, answers: Output[Dataset],
) -> dict:
    from reset import steps

    cfg = steps.read_sections(sections.path)
    stats = steps.evaluate_answers({"mtl": mtl_model.path, "reset": reset_model.path}, test_set.path,
                                   cfg["evaluate"], cfg["model"], cfg["judge"], tracking, "", out_rows=answers.path,
                                   register_cfg=cfg["register"], shard=shard, shards=shards,
                                   dev_path=dev_set.path)
    answers.metadata["rows"] = stats["rows"]
    return stats


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_gathered(
    mtl_model: Input[Model], reset_model: Input[Model], test_set: Input[Dataset], dev_set: Input[Dataset], shard_answers: Input[List[Dataset]],
    selection_report: Input[Artifact], evaluate: dict, model: dict, judge: dict, register: dict, tracking: dict,
    scores: Output[Artifact], metrics: Output[Metrics], report: Output[Markdown], report_html: Output[HTML],
    samples: Output[Dataset],
) -> dict:
    from reset import steps

    payload = steps.evaluate({"mtl": mtl_model.path, "reset": reset_model.path}, test_set.path, evaluate, model,
                             judge, tracking, "", out_metrics=scores.path, out_report=report.path,
                             out_rows=samples.path, out_html=report_html.path, register_cfg=register,
                             rows_paths=[a.path for a in shard_answers], dev_path=dev_set.path,
                             keep_rates_paths={"reset": selection_report.path})
    for name, values in payload["metrics"].items():
        for key, value in values.items():
            metrics.log_metric(f"{name}.{key}", value)
    return {"verdicts": payload["verdicts"], "gates": payload["gates"], "decision": payload.get("decision", "")}
