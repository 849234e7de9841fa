"""Verifiable instructions, IFEval style (Zhou et al. 2023), checked by rules, no model needed.

Instruction ids and kwargs names are IFEval's, so a constraint written here reads the same in
lm-eval's IFEval checkers. Checks follow IFEval's strict mode, with two differences:
- the "english" half of change_case:* (langdetect) is not checked, only the letter case;
- keywords:existence matches whole words (IFEval matches substrings).

A constraint is a dict {"id": "<instruction id>", "kwargs": {...}}. Keys of kwargs whose value is
None are dropped (the IFEval data set stores every possible key, mostly null).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RELATIONS = ("less than", "at least")
CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


class InstructionError(ValueError):
    """A constraint that cannot be checked: unknown id, or a missing / ill-typed kwarg."""


# --------------------------------------------------------------------------- text utilities


def count_words(text: str) -> int:
    """Words as IFEval counts them (nltk RegexpTokenizer(r"\\w+"))."""
    return len(re.findall(r"\w+", text))


_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (
    r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)"
)
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"
_MULTIPLE_DOTS = r"\.{2,}"


def split_into_sentences(text: str) -> list[str]:
    """Split text into sentences with IFEval's rule-based splitter."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTIPLE_DOTS, lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    if "\u201d" in text:
        text = text.replace(".\u201d", "\u201d.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>")
    text = text.replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return sentences


def count_sentences(text: str) -> int:
    """Sentences as IFEval counts them."""
    return len(split_into_sentences(text))


def _compare(actual: int, relation: str, threshold: int) -> bool:
    return actual < threshold if relation == "less than" else actual >= threshold


def _word_re(word: str) -> re.Pattern[str]:
    return re.compile(r"\b" + re.escape(word) + r"\b", flags=re.IGNORECASE)


# --------------------------------------------------------------------------- checks


def _number_words(r: str, kw: dict[str, Any]) -> bool:
    return _compare(count_words(r), kw["relation"], kw["num_words"])


def _number_sentences(r: str, kw: dict[str, Any]) -> bool:
    return _compare(count_sentences(r), kw["relation"], kw["num_sentences"])


def _number_paragraphs(r: str, kw: dict[str, Any]) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", r)
    n = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i in (0, len(paragraphs) - 1):
                n -= 1
            else:
                return False
    return n == kw["num_paragraphs"]


def _existence(r: str, kw: dict[str, Any]) -> bool:
    return all(_word_re(k).search(r) for k in kw["keywords"])


def _forbidden(r: str, kw: dict[str, Any]) -> bool:
    return not any(_word_re(w).search(r) for w in kw["forbidden_words"])


def _frequency(r: str, kw: dict[str, Any]) -> bool:
    actual = len(re.findall(re.escape(kw["keyword"].strip()), r, flags=re.IGNORECASE))
    return _compare(actual, kw["relation"], kw["frequency"])


def _letter_frequency(r: str, kw: dict[str, Any]) -> bool:
    actual = Counter(r.lower())[kw["letter"].lower()]
    return _compare(actual, kw["let_relation"], kw["let_frequency"])


def _bullets(r: str, kw: dict[str, Any]) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == kw["num_bullets"]


def _title(r: str, kw: dict[str, Any]) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def _highlights(r: str, kw: dict[str, Any]) -> bool:
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip())
    return n >= kw["num_highlights"]


def _sections(r: str, kw: dict[str, Any]) -> bool:
    pattern = r"\s?" + re.escape(kw["section_spliter"].strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, r)) - 1 >= kw["num_sections"]


def _json_format(r: str, kw: dict[str, Any]) -> bool:
    value = r.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _constrained_response(r: str, kw: dict[str, Any]) -> bool:
    value = r.strip()
    return any(option in value for option in CONSTRAINED_RESPONSE_OPTIONS)


def _lowercase(r: str, kw: dict[str, Any]) -> bool:
    return r == r.lower()


def _capital(r: str, kw: dict[str, Any]) -> bool:
    return r.isupper()


def _no_comma(r: str, kw: dict[str, Any]) -> bool:
    return "," not in r


def _end_checker(r: str, kw: dict[str, Any]) -> bool:
    value = r.strip().strip('"').lower()
    return value.endswith(kw["end_phrase"].strip().lower())


def _quotation(r: str, kw: dict[str, Any]) -> bool:
    value = r.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def _postscript(r: str, kw: dict[str, Any]) -> bool:
    marker = kw["postscript_marker"].strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, r.lower(), flags=re.MULTILINE))


def _placeholders(r: str, kw: dict[str, Any]) -> bool:
    return len(re.findall(r"\[.*?\]", r)) >= kw["num_placeholders"]


def _repeat_prompt(r: str, kw: dict[str, Any]) -> bool:
    return r.strip().lower().startswith(kw["prompt_to_repeat"].strip().lower())


def _two_responses(r: str, kw: dict[str, Any]) -> bool:
    parts = r.split("******")
    valid = []
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


# --------------------------------------------------------------------------- registry


def _fmt_list(words: Sequence[str]) -> str:
    return str(sorted(words))


@dataclass(frozen=True)
class Checker:
    """One instruction: its kwargs (name -> type tag), its description and its check."""

    id: str
    kwargs: Mapping[str, str]
    description: Callable[[dict[str, Any]], str]
    check: Callable[[str, dict[str, Any]], bool]


_BULLET_EXAMPLE = "Use the markdown bullet points such as:\n* This is point 1. \n* This is point 2"

_CHECKERS: list[Checker] = [
    Checker(
        "length_constraints:number_words",
        {"relation": "relation", "num_words": "int"},
        lambda k: f"Answer with {k['relation']} {k['num_words']} words.",
        _number_words,
    ),
    Checker(
        "length_constraints:number_sentences",
        {"relation": "relation", "num_sentences": "int"},
        lambda k: f"Your response should contain {k['relation']} {k['num_sentences']} sentences.",
        _number_sentences,
    ),
    Checker(
        "length_constraints:number_paragraphs",
        {"num_paragraphs": "int"},
        lambda k: f"There should be {k['num_paragraphs']} paragraphs. "
        "Paragraphs are separated with the markdown divider: ***",
        _number_paragraphs,
    ),
    Checker(
        "keywords:existence",
        {"keywords": "str_list"},
        lambda k: f"Include keywords {_fmt_list(k['keywords'])} in the response.",
        _existence,
    ),
    Checker(
        "keywords:forbidden_words",
        {"forbidden_words": "str_list"},
        lambda k: f"Do not include keywords {_fmt_list(k['forbidden_words'])} in the response.",
        _forbidden,
    ),
    Checker(
        "keywords:frequency",
        {"keyword": "str", "frequency": "int", "relation": "relation"},
        lambda k: f"In your response, the word {k['keyword'].strip()} should appear "
        f"{k['relation']} {k['frequency']} times.",
        _frequency,
    ),
    Checker(
        "keywords:letter_frequency",
        {"letter": "letter", "let_frequency": "int", "let_relation": "relation"},
        lambda k: f"In your response, the letter {k['letter']} should appear "
        f"{k['let_relation']} {k['let_frequency']} times.",
        _letter_frequency,
    ),
    Checker(
        "detectable_format:number_bullet_lists",
        {"num_bullets": "int"},
        lambda k: f"Your answer must contain exactly {k['num_bullets']} bullet points. " + _BULLET_EXAMPLE,
        _bullets,
    ),
    Checker(
        "detectable_format:title",
        {},
        lambda k: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
        _title,
    ),
    Checker(
        "detectable_format:number_highlighted_sections",
        {"num_highlights": "int"},
        lambda k: f"Highlight at least {k['num_highlights']} sections in your answer with markdown, "
        "i.e. *highlighted section*.",
        _highlights,
    ),
    Checker(
        "detectable_format:multiple_sections",
        {"section_spliter": "str", "num_sections": "int"},
        lambda k: f"Your response must have {k['num_sections']} sections. Mark the beginning of each section "
        f"with {k['section_spliter'].strip()} X, such as:\n{k['section_spliter'].strip()} 1\n"
        f"[content of section 1]\n{k['section_spliter'].strip()} 2\n[content of section 2]",
        _sections,
    ),
    Checker(
        "detectable_format:json_format",
        {},
        lambda k: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
        _json_format,
    ),
    Checker(
        "detectable_format:constrained_response",
        {},
        lambda k: f"Answer with one of the following options: {CONSTRAINED_RESPONSE_OPTIONS}",
        _constrained_response,
    ),
    Checker(
        "change_case:english_lowercase",
        {},
        lambda k: "Your entire response should be in English, and in all lowercase letters. "
        "No capital letters are allowed.",
        _lowercase,
    ),
    Checker(
        "change_case:english_capital",
        {},
        lambda k: "Your entire response should be in English, and in all capital letters.",
        _capital,
    ),
    Checker(
        "punctuation:no_comma",
        {},
        lambda k: "In your entire response, refrain from the use of any commas.",
        _no_comma,
    ),
    Checker(
        "startend:end_checker",
        {"end_phrase": "str"},
        lambda k: f"Finish your response with this exact phrase {k['end_phrase']}. "
        "No other words should follow this phrase.",
        _end_checker,
    ),
    Checker(
        "startend:quotation",
        {},
        lambda k: "Wrap your entire response with double quotation marks.",
        _quotation,
    ),
    Checker(
        "detectable_content:postscript",
        {"postscript_marker": "str"},
        lambda k: f"At the end of your response, please explicitly add a postscript starting with "
        f"{k['postscript_marker'].strip()}",
        _postscript,
    ),
    Checker(
        "detectable_content:number_placeholders",
        {"num_placeholders": "int"},
        lambda k: f"The response must contain at least {k['num_placeholders']} placeholders represented by "
        "square brackets, such as [address].",
        _placeholders,
    ),
    Checker(
        "combination:repeat_prompt",
        {"prompt_to_repeat": "str"},
        lambda k: "First repeat the request word for word without change, then give your answer "
        "(1. do not say any words or characters before repeating the request; 2. the request you need "
        "to repeat does not include this sentence)",
        _repeat_prompt,
    ),
    Checker(
        "combination:two_responses",
        {},
        lambda k: "Give two different responses. Responses and only responses should be separated by "
        "6 asterisk symbols: ******.",
        _two_responses,
    ),
]

CHECKERS: dict[str, Checker] = {c.id: c for c in _CHECKERS}
SUPPORTED_IDS: tuple[str, ...] = tuple(sorted(CHECKERS))


# --------------------------------------------------------------------------- validation


def _check_kwarg(iid: str, name: str, tag: str, value: Any) -> Any:
    where = f"instruction {iid!r}: kwarg {name!r}"
    if tag == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InstructionError(f"{where} must be a non-negative integer, got {value!r}")
    elif tag == "relation":
        if value not in RELATIONS:
            raise InstructionError(f"{where} must be one of {list(RELATIONS)}, got {value!r}")
    elif tag == "str":
        if not isinstance(value, str) or not value.strip():
            raise InstructionError(f"{where} must be a non-empty string, got {value!r}")
    elif tag == "letter":
        if not isinstance(value, str) or len(value) != 1 or not value.isalpha():
            raise InstructionError(f"{where} must be a single letter, got {value!r}")
    elif tag == "str_list":
        if (
            not isinstance(value, list | tuple)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise InstructionError(f"{where} must be a non-empty list of non-empty strings, got {value!r}")
        value = [v.strip() for v in value]
    return value


def _resolve(constraint: Any) -> tuple[Checker, dict[str, Any]]:
    """The checker of a constraint and its validated kwargs."""
    if not isinstance(constraint, Mapping):
        raise InstructionError(f"a constraint must be an object with 'id' and 'kwargs', got {constraint!r}")
    iid = constraint.get("id")
    if not isinstance(iid, str):
        raise InstructionError(f"a constraint needs a string 'id', got {iid!r}")
    checker = CHECKERS.get(iid)
    if checker is None:
        raise InstructionError(f"unknown instruction id {iid!r}; supported: {', '.join(SUPPORTED_IDS)}")
    raw = constraint.get("kwargs") or {}
    if not isinstance(raw, Mapping):
        raise InstructionError(f"instruction {iid!r}: 'kwargs' must be an object, got {raw!r}")
    given = {k: v for k, v in raw.items() if v is not None}
    unknown = sorted(set(given) - set(checker.kwargs))
    if unknown:
        raise InstructionError(
            f"instruction {iid!r}: unknown kwarg {unknown[0]!r}; expected {sorted(checker.kwargs) or 'none'}"
        )
    kwargs: dict[str, Any] = {}
    for name, tag in checker.kwargs.items():
        if name not in given:
            raise InstructionError(f"instruction {iid!r}: missing kwarg {name!r}")
        kwargs[name] = _check_kwarg(iid, name, tag, given[name])
    return checker, kwargs


# --------------------------------------------------------------------------- public API


def check(constraint: Mapping[str, Any], response: str) -> bool:
    """Whether `response` follows the constraint (IFEval strict)."""
    checker, kwargs = _resolve(constraint)
    if not isinstance(response, str):
        raise TypeError(f"response must be a string, got {type(response).__name__}")
    return bool(response.strip()) and checker.check(response, kwargs)


def describe(constraint: Mapping[str, Any]) -> str:
    """The instruction sentence as IFEval phrases it, e.g. "Answer with less than 40 words."."""
    checker, kwargs = _resolve(constraint)
    return checker.description(kwargs)


def validate_constraints(constraints: Any) -> None:
    """Raise InstructionError naming the index, id and kwarg of the first bad constraint."""
    if not isinstance(constraints, list | tuple):
        raise InstructionError(f"constraints must be a list, got {type(constraints).__name__}")
    for i, c in enumerate(constraints):
        try:
            _resolve(c)
        except InstructionError as exc:
            raise InstructionError(f"constraints[{i}]: {exc}") from None


def instruction_score(
    constraints: Sequence[Mapping[str, Any]], response: str
) -> tuple[float | None, list[dict[str, Any]]]:
    """Share of constraints followed (None without constraints) and per-constraint results."""
    results = []
    for c in constraints:
        followed = check(c, response)
        results.append({"id": c["id"], "followed": followed})
    if not results:
        return None, []
    return sum(r["followed"] for r in results) / len(results), results
