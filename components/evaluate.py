"""Evaluate base, MTL, ReSet (and the current champion) on the held-out split: the report."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_models(
    mtl_model: Input[Model], reset_model: Input[Model], test_set: Input[Dataset], dev_set: Input[Dataset],
    selection_report: Input[Artifact], evaluate: dict, model: dict, judge: dict, register: dict, tracking: dict,
    scores: Output[Artifact], metrics: Output[Metrics], report: Output[Markdown], report_html: Output[HTML],
    samples: Output[Dataset],
) -> dict:
    from reset import steps

    payload = steps.evaluate({"mtl": mtl_model.path, "reset": reset_model.path}, test_set.path, evaluate, model,
                             judge, tracking, "", out_metrics=scores.path, out_report=report.path,
                             out_rows=samples.path, out_html=report_html.path, register_cfg=register, dev_path=dev_set.path,
                             keep_rates_paths={"reset": selection_report.path})
    for name, values in payload["metrics"].items():
        for key, value in values.items():
            metrics.log_metric(f"{name}.{key}", value)
    return {"verdicts": payload["verdicts"], "gates": payload["gates"], "decision": payload.get("decision", "")}
