"""Reject sampling: keep the best candidate per prompt (ReSet) or a stricter top set (ReSet-S)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def select_samples(
    seen_prompts: Input[Dataset], candidates: Input[Dataset], judgments: Input[Dataset], select: dict,
    tracking: dict, selected_set: Output[Dataset], selection_report: Output[Artifact], dataset_card: Output[Markdown],
    generate: dict = {},  # noqa: B006 - a KFP parameter default (never mutated)
) -> dict:
    """`generate` (an arm that shares a larger generation): select among the candidates its own
    sampling plan would have drawn. `dataset_card`: the selected set's Hugging Face card (synthetic)."""
    from reset import steps

    cfg = steps.config(select=select, generate=generate, tracking=tracking)
    report = steps.select(seen_prompts.path, candidates.path, judgments.path, cfg, out_selected=selected_set.path,
                          out_report=selection_report.path, own_plan=bool(generate), out_card=dataset_card.path)
    selected_set.metadata["rows"] = report["selected"]
    return {k: v for k, v in report.items() if not isinstance(v, dict)}
