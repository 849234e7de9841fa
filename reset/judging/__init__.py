"""Judges: score (example, candidate) pairs on instruction following, faithfulness and task
quality, and combine the axes with weights. base.py holds the protocol; the judges are in rules
(IFEval), lexical (K-Precision, task score), faithfulness (embedding, NLI) and llm/; build.py
builds the ones a JudgeConfig names."""

from reset.judging.base import (
    AxisScore,
    FaithfulnessJudge,
    FaithfulnessScorer,
    Judge,
    JudgeError,
    Pair,
    combine,
    judge,
)
from reset.judging.build import build_judges, close_judges, default_judges

__all__ = [
    "AxisScore", "FaithfulnessJudge", "FaithfulnessScorer", "Judge", "JudgeError", "Pair", "build_judges",
    "close_judges", "combine", "default_judges", "judge",
]
