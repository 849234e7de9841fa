"""Lexical scores in [0, 1]: K-Precision (faithfulness to a context), SQuAD token F1 and ROUGE-L F1.

All work on SQuAD-normalised tokens: lowercased, punctuation removed, articles (a, an, the)
dropped, split on whitespace.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lowercase, strip punctuation, drop articles, split on whitespace."""
    text = text.lower().translate(_PUNCT)
    return _ARTICLES.sub(" ", text).split()


# Function words and attribution words ("according to the passage", "the text says") carry no
# claim about the world: a grounded answer that cites its source must not lose faithfulness for it.
NEUTRAL_WORDS = frozenset(
    ["i", "me", "my", "we", "our", "you", "your", "he", "him", "his", "she", "her", "it", "its", "they", "them", "their", "this", "that", "these", "those", "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do", "does", "did", "will", "would", "shall", "should", "can", "could", "may", "might", "must", "of", "in", "on", "at", "to", "for", "from", "by", "with", "about", "as", "into", "over", "after", "before", "than", "then", "so", "and", "or", "but", "if", "not", "no", "yes", "also", "there", "here", "which", "who", "whom", "whose", "what", "when", "where", "why", "how", "all", "any", "some", "such", "very", "just", "only", "according", "passage", "text", "article", "context", "source", "says", "say", "said", "states", "stated", "mentions", "mentioned", "reports", "reported"]
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


def _lcs_length(a: list[str], b: list[str]) -> int:
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
    return _f1(_lcs_length(pred, ref), len(pred), len(ref))


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
