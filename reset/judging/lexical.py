"""Lexical judges, no model: K-Precision (faithfulness to a context) and the task score against
the reference (SQuAD token F1 / ROUGE-L F1, times the gold answer's recall where one is named).

All scores work on SQuAD-normalised tokens: lowercased, punctuation removed, articles (a, an, the)
dropped, split on whitespace.

  KPrecision()     faithfulness: share of the response's content words found in the context; only
                   where a context exists.
  ReferenceTask    task quality against the reference (token F1 for extractive tasks, ROUGE-L F1
                   otherwise); both fall when a whole passage is copied. Where the example names its
                   gold answer span (meta["answer"]), the score is multiplied by the answer's recall,
                   so a fluent answer from memory that contradicts the passage scores near 0 however
                   many words it shares with the reference.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reset.judging.base import AxisScore, FaithfulnessJudge, Pair, check_lengths

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lowercase, strip punctuation, drop articles, split on whitespace."""
    text = text.lower().translate(_PUNCT)
    return _ARTICLES.sub(" ", text).split()


# Function words and attribution words ("according to the passage", "the text says") carry no
# claim about the world: a grounded answer that cites its source must not lose faithfulness for it.
NEUTRAL_WORDS = frozenset(
    [
        "i",
        "me",
        "my",
        "we",
        "our",
        "you",
        "your",
        "he",
        "him",
        "his",
        "she",
        "her",
        "it",
        "its",
        "they",
        "them",
        "their",
        "this",
        "that",
        "these",
        "those",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "will",
        "would",
        "shall",
        "should",
        "can",
        "could",
        "may",
        "might",
        "must",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "about",
        "as",
        "into",
        "over",
        "after",
        "before",
        "than",
        "then",
        "so",
        "and",
        "or",
        "but",
        "if",
        "not",
        "no",
        "yes",
        "also",
        "there",
        "here",
        "which",
        "who",
        "whom",
        "whose",
        "what",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "some",
        "such",
        "very",
        "just",
        "only",
        "according",
        "passage",
        "text",
        "article",
        "context",
        "source",
        "says",
        "say",
        "said",
        "states",
        "stated",
        "mentions",
        "mentioned",
        "reports",
        "reported",
    ]
)


def k_precision(response: str, context: str, *, content_only: bool = True) -> float:
    """K-Precision (Adlakha et al. 2023): share of the response's tokens found in the context.

    A token counts when it occurs anywhere in the context. With `content_only` (the default),
    function and attribution words (NEUTRAL_WORDS) are left out of the count, so "According to the
    passage, X" is as grounded as "X"; a response with no content word scores 0.0, as does an
    empty response or context. `content_only=False` is the plain published definition.
    """
    tokens = normalize_tokens(response)
    if content_only:
        tokens = [t for t in tokens if t not in NEUTRAL_WORDS]
    known = set(normalize_tokens(context))
    if not tokens or not known:
        return 0.0
    return sum(1 for t in tokens if t in known) / len(tokens)


def _f1(overlap: float, n_pred: int, n_ref: int) -> float:
    if overlap <= 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD F1 over normalised tokens (bag-of-tokens overlap). Both empty -> 1.0, one empty -> 0.0."""
    pred, ref = normalize_tokens(prediction), normalize_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    return _f1(overlap, len(pred), len(ref))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of normalised tokens. Both empty -> 1.0, one empty -> 0.0."""
    pred, ref = normalize_tokens(prediction), normalize_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    return _f1(lcs_length(pred, ref), len(pred), len(ref))


def task_score(prediction: str, reference: str, task: str) -> float:
    """Task quality against the reference: token F1 for "extractive", ROUGE-L F1 for "abstractive"/"open"."""
    if task == "extractive":
        return token_f1(prediction, reference)
    if task in ("abstractive", "open"):
        return rouge_l_f1(prediction, reference)
    raise ValueError(f"unknown task {task!r}; expected 'extractive', 'abstractive' or 'open'")


def answer_recall(prediction: str, answer: str) -> float:
    """Share of the gold answer's normalised tokens present in the prediction (1.0 = the answer is
    there). With a counterfactual passage, an answer from memory instead of the passage scores 0."""
    gold = normalize_tokens(answer)
    if not gold:
        return 0.0
    pred = set(normalize_tokens(prediction))
    return sum(1 for t in gold if t in pred) / len(gold)


# ----------------------------------------------------------------------- answers against the passage
# A response that reproduces this share of its passage (or more) is a copy, not an answer.
COPY_LIMIT = 0.5


def answers(value: Any) -> list[list[str]]:
    """meta["answer"] / meta["memory_answer"]: a string or a list of accepted strings, normalised."""
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else []
    return [toks for v in items if isinstance(v, str) and (toks := normalize_tokens(v))]


def contains_span(tokens: Sequence[str], span: Sequence[str]) -> bool:
    """Whether `span` occurs as a contiguous run of `tokens`."""
    k = len(span)
    return k > 0 and any(list(tokens[i : i + k]) == list(span) for i in range(len(tokens) - k + 1))


def passage_copy(response: str, context: str) -> float:
    """Share of the passage's normalised tokens that the response reproduces in order (LCS)."""
    ctx = normalize_tokens(context)
    return lcs_length(normalize_tokens(response), ctx) / len(ctx) if ctx else 0.0


@dataclass(frozen=True)
class AnswerCheck:
    """An extractive answer against its passage (None where the example names no gold answer).

    in_response: the gold answer occurs as a contiguous span; correct: it does, the response is
    not a copy of the passage, and on a counterfactual passage the memory answer is not in it
    either; outcome (counterfactual passages): passage / memory / both / neither / copy."""

    in_response: bool | None
    correct: bool | None
    outcome: str | None
    copy: float | None


def check_answer(example: Any, response: str) -> AnswerCheck:
    """The answer of an extractive example's response, against the passage (see AnswerCheck)."""
    grounded = bool(getattr(example, "has_context", False))
    copy = passage_copy(response, example.context or "") if grounded else None
    if not grounded or example.task != "extractive":
        return AnswerCheck(None, None, None, copy)
    gold = answers(example.meta.get("answer"))
    if not gold:
        return AnswerCheck(None, None, None, copy)
    tokens = normalize_tokens(response)
    cf = bool(example.meta.get("counterfactual", False))
    in_resp = any(contains_span(tokens, a) for a in gold)
    memory = any(contains_span(tokens, m) for m in answers(example.meta.get("memory_answer"))) if cf else False
    is_copy = copy is not None and copy >= COPY_LIMIT
    outcome = None
    if cf:
        outcome = (
            "copy"
            if is_copy
            else "both"
            if in_resp and memory
            else "passage"
            if in_resp
            else "memory"
            if memory
            else "neither"
        )
    return AnswerCheck(in_resp, in_resp and not memory and not is_copy, outcome, copy)


# ------------------------------------------------------------------------------------------ judges
class KPrecisionScorer:
    """Lexical faithfulness: reset.k_precision (share of the response's content words that
    occur in the context). The reason lists a few response words missing from the context."""

    name = "k-precision"

    def __init__(self, content_only: bool = True, show_missing: int = 5):
        self.content_only = content_only
        self.show_missing = show_missing

    def score(self, responses: Sequence[str], contexts: Sequence[str]) -> list[tuple[float, str]]:
        check_lengths(responses, contexts)
        out = []
        for response, context in zip(responses, contexts, strict=True):
            value = k_precision(response, context, content_only=self.content_only)
            reason = f"K-Precision {value:.2f} ({'content words' if self.content_only else 'all tokens'})"
            known = set(normalize_tokens(context))
            missing = [
                t
                for t in dict.fromkeys(normalize_tokens(response))
                if t not in known and not (self.content_only and t in NEUTRAL_WORDS)
            ]
            if missing and known and self.show_missing > 0:
                reason += f"; not in context: {', '.join(missing[: self.show_missing])}"
                reason += ", ..." if len(missing) > self.show_missing else ""
            out.append((value, reason))
        return out


def KPrecision() -> FaithfulnessJudge:  # noqa: N802 - reads as the judge's class
    """The "k-precision" judge: KPrecisionScorer on the faithfulness axis."""
    return FaithfulnessJudge(KPrecisionScorer(), name="k-precision")


class ReferenceTask:
    """The "reference" judge: task score against the reference, gated by the gold answer's recall."""

    name = "reference"
    axis = "task"

    def score(self, pairs: Sequence[Pair]) -> list[AxisScore]:
        out = []
        for ex, cand in pairs:
            v = task_score(cand.text, ex.response, ex.task)
            why = f"{'token F1' if ex.task == 'extractive' else 'ROUGE-L F1'} {v:.2f} vs reference"
            answer = ex.meta.get("answer")
            if isinstance(answer, str) and answer.strip():
                recall = answer_recall(cand.text, answer)
                v = v * recall
                why += f", answer recall {recall:.2f}"
            out.append(AxisScore(v, why))
        return out
