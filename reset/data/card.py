"""The data card of a mix (or of `data check`): what was read, what was kept and why the rest was
not, how long the examples are in tokens and how many the model's limits will cut, and how much
the held-out prompts overlap the training prompts. A plain dict, rendered as Markdown and HTML.

Lengths need the base model's tokenizer, which lives above this layer: the caller passes a
`LengthMeter` (reset.steps builds one from model.base; `whitespace_meter` counts words where no
tokenizer can be loaded, and the card says so).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reset.data.records import Example

Measure = Callable[[Sequence[Example]], list[tuple[int, int]]]


@dataclass
class LengthMeter:
    """Lengths of examples: (prompt, prompt + response) per example, in `unit`. `overhead_bytes`
    bounds what a prompt template adds (in bytes, so in tokens too: no token is shorter than a
    byte), which lets rows that cannot reach a limit skip the tokenizer."""

    unit: str
    note: str
    measure: Measure
    max_length: int = 0
    max_prompt_length: int = 0
    overhead_bytes: int = 0

    def could_exceed(self, prompt_bytes: int, response_bytes: int) -> bool:
        p = prompt_bytes + self.overhead_bytes + 1
        return (self.max_prompt_length and p > self.max_prompt_length) or (
            self.max_length and p + response_bytes > self.max_length)


def _words(examples: Sequence[Example]) -> list[tuple[int, int]]:
    out = []
    for ex in examples:
        p = len(ex.instruction.split()) + (len(ex.context.split()) if ex.context else 0)
        out.append((p, p + len(ex.response.split())))
    return out


def whitespace_meter(max_length: int = 0, max_prompt_length: int = 0, why: str = "") -> LengthMeter:
    note = "whitespace-separated words" + (f" (the tokenizer could not be loaded: {why})" if why else "")
    return LengthMeter("words", note, _words, max_length, max_prompt_length, 0)


def utf8_len(s: str | None) -> int:
    if not s:
        return 0
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def percentiles(values: Sequence[int]) -> dict[str, float]:
    if not len(values):
        return {"n": 0}
    a = np.asarray(values)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": int(len(a)), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": int(a.max()),
            "mean": round(float(a.mean()), 1)}


@dataclass
class Reservoir:
    """A seeded uniform sample of at most `k` examples."""

    k: int
    seed: int
    items: list[Example] = field(default_factory=list)
    seen: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._draws = np.zeros(0, np.int64)
        self._next = 0

    def add(self, ex: Example) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append(ex)
            return
        if self._next >= len(self._draws):
            self._draws = self._rng.random(4096)
            self._next = 0
        j = int(self._draws[self._next] * self.seen)
        self._next += 1
        if j < self.k:
            self.items[j] = ex


# ------------------------------------------------------------------------------------ rendering
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if v != int(v) else f"{int(v):,}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "-"
    return str(v) if v not in (None, "") else "-"


def _tables(card: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]], list[str]]]:
    """(title, header, rows, notes) of each section, shared by both renderings."""
    out = []
    unit = card.get("length_unit", "tokens")
    src_rows = []
    for s in card.get("sources", []):
        src_rows.append([s["name"], s["slot"], s["format"], s["rows"], s["kept"], s.get("moved", 0),
                         s.get("rejected", {}), s.get("duplicates", {}), s.get("kinds", {}), s.get("splits", {})])
    out.append(
        (
            "Sources",
            [
                "source",
                "slot",
                "format",
                "rows read",
                "kept",
                "moved to grounded",
                "not kept (by reason)",
                "duplicates",
                "kind/task kept",
                "in train / dev / test / seen",
            ],
            src_rows,
            [
                f"{s['name']}: {f['file']} ({f['layout']}, {_fmt(f['bytes'])} bytes, sha256 {f['digest'][:16]})"
                for s in card.get("sources", [])
                for f in s.get("files", [])
            ],
        )
    )
    len_rows = []
    for s in card.get("sources", []):
        lg = s.get("lengths", {})
        for what in ("prompt", "total"):
            p = lg.get(what, {})
            if p.get("n"):
                len_rows.append([s["name"], what, p["n"], p["p50"], p["p90"], p["p99"], p["max"]])
    lim = card.get("limits", {})
    out.append(
        (
            f"Lengths in {unit} (prompt = instruction + context in the chat template; total = with the response)",
            ["source", "part", "measured", "p50", "p90", "p99", "max"],
            len_rows,
            [
                f"measured with {card.get('length_note', '')}; a seeded sample of at most "
                f"{_fmt(card.get('card_sample', 0))} rows per source"
            ],
        )
    )
    trunc_rows = [
        [
            s["name"],
            s.get("kept", 0),
            s.get("truncated", {}).get("prompt", 0),
            s.get("truncated", {}).get("sequence", 0),
        ]
        for s in card.get("sources", [])
    ]
    for name, sp in card.get("splits", {}).items():
        trunc_rows.append(
            [f"split: {name}", sp.get("rows", 0), sp.get("truncated_prompt", 0), sp.get("truncated_sequence", 0)]
        )
    out.append(
        (
            "Truncation",
            [
                "rows",
                "count",
                f"prompt > model.max_prompt_length ({lim.get('max_prompt_length')})",
                f"prompt + response > model.max_length ({lim.get('max_length')})",
            ],
            trunc_rows,
            ["every row is counted (rows that cannot reach a limit by their size are not tokenized)"],
        )
    )
    split_rows = [
        [
            name,
            sp.get("rows", 0),
            sp.get("unique", sp.get("rows", 0)),
            sp.get("by_kind_task", {}),
            sp.get("by_source", {}),
            (sp.get("digest") or "")[:16] or "-",
        ]
        for name, sp in card.get("splits", {}).items()
    ]
    if split_rows:
        out.append(
            (
                "Splits",
                ["split", "rows", "distinct examples", "kind/task", "source", "sha256"],
                split_rows,
                [
                    "test is frozen: only the final evaluation and the promotion gate read it (its digest is "
                    "recorded on the parent run and the registered model); everything chosen looks at dev"
                ],
            )
        )
    q = card.get("quarantine", {})
    q_rows = [[k, v] for k, v in q.get("by_category", {}).items()]
    q_notes = [f"{r}: {n}" for r, n in q.get("excluded_reasons", {}).items()] + q.get("first", [])
    out.append(
        (
            f"Quarantine ({_fmt(q.get('total', 0))} rows, each with file, line and reason)",
            ["category", "rows"],
            q_rows,
            q_notes,
        )
    )
    ov = card.get("overlap")
    if ov:
        out.append(
            (
                f"{ov.get('split', 'held-out').capitalize()} / train overlap (word {ov['n']}-grams of the prompts)",
                [
                    f"{ov.get('split', 'held-out')} prompts",
                    "measurable",
                    "sharing any n-gram",
                    "sharing at least half",
                    "mean share",
                ],
                [[ov["heldout"], ov["measurable"], ov["any"], ov["half"], ov["mean_share"]]],
                [f"{e['id']}: {e['share']:.2f}" for e in ov.get("worst", [])],
            )
        )
    notes = card.get("notes", [])
    if notes:
        out.append(("Notes", ["note"], [[n] for n in notes], []))
    return out


def to_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# Data card: {card.get('title', 'data')}",
        "",
        f"{card.get('generated', '')} · seed {card.get('seed', '')} · lengths in {card.get('length_unit', '')}",
        "",
    ]
    for title, header, rows, notes in _tables(card):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            lines.append("| " + " | ".join(_fmt(c).replace("|", "\\|") for c in r) + " |")
        lines.append("")
        lines += [f"- {n}" for n in notes]
        if notes:
            lines.append("")
    return "\n".join(lines)


def to_html(card: dict[str, Any]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Data card</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}th{background:#eee}"
        "</style></head><body>",
        f"<h1>Data card: {e(str(card.get('title', 'data')))}</h1>",
        f"<p>{e(str(card.get('generated', '')))} · seed {e(str(card.get('seed', '')))} · lengths in "
        f"{e(str(card.get('length_unit', '')))}</p>",
    ]
    for title, header, rows, notes in _tables(card):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in r) + "</tr>")
        parts.append("</table>")
        if notes:
            parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def flat_metrics(card: dict[str, Any]) -> dict[str, float]:
    """The card's counts as flat metric names (for MLflow), e.g. `source.dolly.kept`,
    `rejected.invalid`, `truncated.train.sequence`, `length.prompt.p90`."""
    m: dict[str, float] = {}
    for s in card.get("sources", []):
        base = f"source.{s['name']}"
        for k in ("rows", "kept", "moved"):
            m[f"{base}.{k}"] = s.get(k, 0)
        for k, v in {**s.get("rejected", {}), **s.get("duplicates", {})}.items():
            m[f"{base}.{k}"] = v
        for k, v in s.get("truncated", {}).items():
            m[f"{base}.truncated_{k}"] = v
        for k, v in s.get("splits", {}).items():
            m[f"{base}.{k}"] = v
        for part, p in s.get("lengths", {}).items():
            for q in ("p50", "p90", "p99", "max"):
                if q in p:
                    m[f"{base}.length.{part}.{q}"] = p[q]
    for k, v in card.get("quarantine", {}).get("by_category", {}).items():
        m[f"rejected.{k}"] = v
    for name, sp in card.get("splits", {}).items():
        m[f"truncated.{name}.prompt"] = sp.get("truncated_prompt", 0)
        m[f"truncated.{name}.sequence"] = sp.get("truncated_sequence", 0)
        for kt, v in sp.get("by_kind_task", {}).items():
            m[f"{name}.{kt}"] = v
    ov = card.get("overlap")
    if ov:
        m["overlap.any"], m["overlap.half"], m["overlap.mean_share"] = ov["any"], ov["half"], ov["mean_share"]
    return {k: float(v) for k, v in m.items()}
