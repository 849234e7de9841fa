"""Reject sampling: keep the best candidate per prompt (ReSet) or a stricter top set (ReSet-S); the
judged candidates as preference pairs (TRL's format) beside it."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def select_samples(
    seen_prompts: Input[Dataset], candidates: Input[Dataset], judgments: Input[Dataset], select: dict,
    tracking: dict, selected_set: Output[Dataset], selection_report: Output[Artifact], dataset_card: Output[Markdown],
    preference_pairs: Output[Dataset],
    generate: dict = {}, model: dict = {}, round_number: int = 1,  # noqa: B006 - KFP parameter defaults (never mutated)
) -> dict:
    """`generate` (an arm that shares a larger generation): select among the candidates its own
    sampling plan would have drawn. `round_number`: the ReSet round (its threshold rises by
    select.threshold_step a round); `model`: the system prompt the preference pairs' prompts carry.
    `dataset_card`: the selected set's Hugging Face card (synthetic)."""
    from reset import steps

    cfg = steps.config(select=select, generate=generate, model=model, tracking=tracking)
    report = steps.select(seen_prompts.path, candidates.path, judgments.path, cfg, out_selected=selected_set.path,
                          out_report=selection_report.path, own_plan=bool(generate), out_card=dataset_card.path,
                          out_pairs=preference_pairs.path, round_=round_number,
                          name="select" if round_number == 1 else f"select-r{round_number}")
    selected_set.metadata["rows"] = report["selected"]
    preference_pairs.metadata.update({k: v for k, v in report["preference_pairs"].items() if not isinstance(v, dict)})
    preference_pairs.metadata["format"] = "trl preference, conversational: prompt, chosen, rejected"
    return {k: v for k, v in report.items() if not isinstance(v, dict)}
