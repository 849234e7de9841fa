"""Natural Questions, in two shapes:

- the simplified JSONL (v1.0-simplified_*.jsonl[.gz]): {example_id, question_text,
  document_text (space-separated tokens, HTML tags included), long_answer_candidates,
  annotations: [{long_answer: {start_token, end_token}, short_answers: [{start_token,
  end_token}], yes_no_answer}]}. The context is the long answer (the paragraph, table or list
  that holds the answer) with HTML tags removed; the reference and meta["answer"] are the first
  short answer. Rows without a short answer (about two thirds of NQ: a long answer only, a
  yes/no answer, or no answer at all) are excluded with that reason and counted; an extractive
  task needs a span;
- the common {id, question, context, answers} shape (SQuAD-style copies of NQ; `answers` a list
  of strings, a {text: [...]} object or a list of {text} objects). Rows with no answer are
  excluded.

Every example is extractive."""

from __future__ import annotations

from typing import Any

from reset.data.sources.base import Converted, Ctx, Excluded, example, row_id, text

NAME = "natural-questions"
LABEL = "natural-questions"
SLOT = "grounded"
KNOWN = frozenset({"example_id", "question_text", "document_text", "document_url", "document_title",
                   "long_answer_candidates", "annotations", "id", "question", "context", "answers", "title"})
WINDOW = 100  # tokens either side of a short answer that has no long answer


def matches(row: dict[str, Any]) -> bool:
    return ("question_text" in row and "annotations" in row) or ("question" in row and "answers" in row)


def _question(q: str) -> str:
    q = q.strip()
    if not q:
        raise ValueError("the question is empty")
    q = q[0].upper() + q[1:]
    return q if q.endswith("?") else q + "?"


def _span(tokens: list[str], start: Any, end: Any) -> str:
    if not (isinstance(start, int) and isinstance(end, int)) or start < 0 or end > len(tokens) or end <= start:
        return ""
    return " ".join(t for t in tokens[start:end] if not (t.startswith("<") and t.endswith(">")))


def _simplified(row: dict[str, Any], ctx: Ctx) -> Converted:
    question = _question(text(row, "question_text"))
    tokens = text(row, "document_text").split(" ")
    annotations = row.get("annotations")
    if not isinstance(annotations, list):
        raise ValueError("field 'annotations': expected a list")
    long_only = yes_no = False
    for ann in annotations:
        if not isinstance(ann, dict):
            raise ValueError("field 'annotations': expected a list of objects")
        shorts = ann.get("short_answers") or []
        la = ann.get("long_answer") or {}
        if shorts and isinstance(shorts[0], dict):
            answer = _span(tokens, shorts[0].get("start_token"), shorts[0].get("end_token"))
            context = _span(tokens, la.get("start_token"), la.get("end_token"))
            if not context and answer:
                s = shorts[0]["start_token"]
                context = _span(tokens, max(0, s - WINDOW), min(len(tokens), shorts[0]["end_token"] + WINDOW))
            if answer and context:
                ex = example(ctx, id=row_id(row, "example_id", ctx.source, question, context), instruction=question,
                             response=answer, context=context, task=ctx.task or "extractive",
                             meta={"answer": answer, **({"title": str(row["document_title"])}
                                                        if row.get("document_title") else {})})
                return Converted(ex, "extractive")
        if ann.get("yes_no_answer") in ("YES", "NO"):
            yes_no = True
        if isinstance(la.get("start_token"), int) and la["start_token"] >= 0:
            long_only = True
    if yes_no:
        raise Excluded("natural-questions: a yes/no answer, no short answer span")
    if long_only:
        raise Excluded("natural-questions: no short answer (a long answer only)")
    raise Excluded("natural-questions: no answer in the document")


def _answers(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return _answers(value.get("text", []))
    if isinstance(value, list):
        out = []
        for v in value:
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, dict) and isinstance(v.get("text"), str):
                out.append(v["text"])
            else:
                raise ValueError("field 'answers': expected strings or objects with a 'text'")
        return out
    if value is None:
        return []
    raise ValueError(f"field 'answers': expected a list, an object or a string, got {type(value).__name__}")


def _common(row: dict[str, Any], ctx: Ctx) -> Converted:
    question = _question(text(row, "question"))
    context = text(row, "context")
    answers = [a.strip() for a in _answers(row.get("answers")) if a.strip()]
    if not answers:
        raise Excluded("natural-questions: no answer")
    ex = example(ctx, id=row_id(row, "id", ctx.source, question, context), instruction=question,
                 response=answers[0], context=context, task=ctx.task or "extractive", meta={"answer": answers[0]})
    return Converted(ex, "extractive")


def convert(row: dict[str, Any], ctx: Ctx) -> list[Converted]:
    return [_simplified(row, ctx) if "question_text" in row else _common(row, ctx)]
