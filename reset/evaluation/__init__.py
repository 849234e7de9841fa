"""Evaluation on the held-out split: per-example scores, statistics, the comparison and its report.

  metrics     evaluate() one model -> point metrics and one row per example; score_example(); the
              metric specs (METRICS, metrics_for, family_metrics, judge_metrics); PRIMARY axes
  statistics  Wilson / bootstrap intervals, exact McNemar, Newcombe's paired interval, paired
              bootstrap, sample size and power for paired proportions and means
  summary     summarize() arms on the same examples: estimates with intervals, paired tests
              against a reference arm; verdict(), flat_metrics(), identical_answers()
  report      Markdown: markdown_report(), interval_table(), paired_table(), keep_rate_table()
  plot        tradeoff_plot(): IF vs faithfulness, one point per arm with interval whiskers (PNG)
  html        html_report() / write_html_report(): one self-contained HTML file
  runner      evaluate_models(): several models on the same examples, generated in one batch
  gate        gate(): is an arm at least as good as the reference on both axes (promotion)
"""

from reset.evaluation.gate import GateDecision, gate
from reset.evaluation.metrics import METRICS, PRIMARY, evaluate, metrics_for, point_metrics, score_example
from reset.evaluation.report import COLUMNS, comparison_table, markdown_report
from reset.evaluation.runner import evaluate_models
from reset.evaluation.summary import Summary, flat_metrics, summarize, verdict, verdicts

__all__ = [
    "COLUMNS", "METRICS", "PRIMARY", "GateDecision", "Summary", "comparison_table", "evaluate", "evaluate_models",
    "flat_metrics", "gate", "markdown_report",
    "metrics_for", "point_metrics", "score_example", "summarize", "verdict", "verdicts",
]
