"""Reading a judge's reply: a 1-10 score (and rationale) from JSON, "Score: 7" or a leading number."""

from __future__ import annotations

import json
import math
import re
from typing import Any


class ParseError(ValueError):
    """The judge's reply holds no valid 1-10 score."""


_SCORE_WORD = re.compile(
    r"\bscore\b[\"'*]*\s*(?:is|of|=|:)?\s*[\"'*]*\s*(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*10)?", re.IGNORECASE
)
_LEADING_NUMBER = re.compile(r"^\s*[*#]*\s*(-?\d+(?:\.\d+)?)\s*(?:(?:/|out of)\s*10)?(?=\s|[.,;:)\-*]|$)")


def _as_score(value: Any) -> float:
    if isinstance(value, bool):
        raise ParseError(f"score {value!r} is not a number")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*", value)
        if not m:
            raise ParseError(f"score {value!r} is not a number")
        value = float(m.group(1))
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ParseError(f"score {value!r} is not a number")
    if not 1 <= value <= 10:
        raise ParseError(f"score {value!r} is outside 1-10")
    return float(value)


def _json_objects(text: str):
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def parse_judgment(text: str | None) -> tuple[float, str]:
    """(raw score 1-10, rationale) from a judge's reply; raises ParseError.

    Accepts a JSON object anywhere in the text (fenced or not, with text around it) that has a
    "score" key, then "Score: 7", "score is 7/10", then a reply that starts with a number ("7",
    "7/10 - good"). Several JSON objects whose scores differ are refused (the reply may be quoting
    the judged material)."""
    if text is None or not text.strip():
        raise ParseError("empty reply")
    found: list[tuple[Any, str]] = []
    for obj in _json_objects(text):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        if "score" in lowered:
            why = lowered.get("rationale", lowered.get("reason", lowered.get("explanation", "")))
            found.append((lowered["score"], str(why).strip()))
    if found:
        if len({json.dumps(score) for score, _ in found}) > 1:
            # e.g. a reply that quotes the material's own {"score": 10} before its verdict: which
            # one is the judge's cannot be told, so it is no verdict (and is retried)
            raise ParseError(f"the reply holds {len(found)} JSON objects with different scores")
        return _as_score(found[0][0]), found[0][1]
    matches = list(_SCORE_WORD.finditer(text))
    if matches:
        return _as_score(matches[-1].group(1)), text.strip()[:500]
    m = _LEADING_NUMBER.match(text)
    if m:
        return _as_score(m.group(1)), text[m.end():].strip(" .:-\n")[:500]
    snippet = text.strip().replace("\n", " ")[:80]
    raise ParseError(f"no score found in reply {snippet!r}")


def to_unit(raw: float) -> float:
    """1-10 -> [0, 1]."""
    return (raw - 1.0) / 9.0
