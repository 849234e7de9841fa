"""Evaluation on the held-out split: metrics per model and the comparison report."""

from reset.evaluation.metrics import PRIMARY, evaluate, metrics_of
from reset.evaluation.report import COLUMNS, comparison_table

__all__ = ["COLUMNS", "PRIMARY", "comparison_table", "evaluate", "metrics_of"]
