"""Promotion: re-score champion and challenger on the frozen evaluation set, move the champion
alias when the gate passes (under the promotion lock, compare-and-set). See reset/promotion.py."""

from kfp import dsl
from kfp.dsl import Artifact, Markdown, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def promote_challenger(
    register: dict, evaluate: dict, model: dict, judge: dict, tracking: dict, challenger: str,
    report: Output[Markdown], summary: Output[Artifact],
) -> dict:
    from reset import promotion, steps

    cfg = steps.config(register=register, evaluate=evaluate, model=model, judge=judge, tracking=tracking)
    return promotion.promote(cfg, challenger=challenger, out_report=report.path, out_summary=summary.path)
