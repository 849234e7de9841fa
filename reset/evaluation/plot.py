"""The trade-off plot: instruction following against faithfulness, one point per arm with its 95%
interval as whiskers on both axes (matplotlib, Agg canvas, PNG; no pyplot, no global state).

    png = tradeoff_plot(summary, path="tradeoff.png", x="if_prompt_acc", y="faithfulness")
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from reset.evaluation.metrics import PRIMARY
from reset.evaluation.summary import Summary

AXIS_TITLES = {
    "if_prompt_acc": "Instruction following: prompts with every constraint followed",
    "faithfulness": "Faithfulness: judges' score, 0 for a wrong extractive answer",
}
# Arms drawn in their own colour (others cycle through the default palette).
_COLOURS = {"base": "#7f7f7f", "mtl": "#1f77b4", "reset": "#d62728", "reset-s": "#ff7f0e", "control": "#2ca02c"}


def tradeoff_plot(summary: Summary, path: str | os.PathLike[str] | None = None, *, x: str = PRIMARY[0],
                  y: str = PRIMARY[1], title: str | None = None, dpi: int = 110) -> bytes:
    """The PNG (bytes; also written to `path` when given). Arms without data on an axis are left
    out and named in the caption."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 5.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    palette = iter(["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939"])
    missing = []
    spans: dict[str, list[float]] = {"x": [], "y": []}
    for arm in summary.arms:
        ex, ey = summary.estimates[arm].get(x), summary.estimates[arm].get(y)
        if ex is None or ey is None or ex.n == 0 or ey.n == 0 or math.isnan(ex.value) or math.isnan(ey.value):
            missing.append(summary.label(arm))
            continue
        colour = _COLOURS.get(arm) or next(palette, "#000000")
        xerr = [[_err(ex.value, ex.low)], [_err(ex.high, ex.value)]]
        yerr = [[_err(ey.value, ey.low)], [_err(ey.high, ey.value)]]
        is_ref = arm == summary.reference
        ax.errorbar([ex.value], [ey.value], xerr=xerr, yerr=yerr, fmt="s" if is_ref else "o", color=colour,
                    ecolor=colour, elinewidth=1.2, capsize=4, markersize=8 if is_ref else 7,
                    label=summary.label(arm) + (" (reference)" if is_ref else ""))
        ax.annotate(summary.label(arm), (ex.value, ey.value), textcoords="offset points", xytext=(6, 6), fontsize=9,
                    color=colour)
        spans["x"] += [_lo(ex), _hi(ex)]
        spans["y"] += [_lo(ey), _hi(ey)]
    ax.set_xlabel(AXIS_TITLES.get(x) or f"{summary.metric(x).label} ({x})")
    ax.set_ylabel(AXIS_TITLES.get(y) or f"{summary.metric(y).label} ({y})")
    if spans["x"]:
        ax.set_xlim(*_limits(spans["x"]))
        ax.set_ylim(*_limits(spans["y"]))
        ax.legend(loc="best", fontsize=8, frameon=False)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Instruction following vs faithfulness (95% intervals)", fontsize=11)
    if missing:
        fig.text(0.01, 0.01, "no data: " + ", ".join(missing), fontsize=7, color="#666666")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def _limits(values: list[float], pad: float = 0.05, min_span: float = 0.2) -> tuple[float, float]:
    """The data's range padded, at least `min_span` wide, inside [0, 1]."""
    lo, hi = min(values) - pad, max(values) + pad
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    if lo < 0.0:
        lo, hi = 0.0, min(1.0, hi - lo)
    if hi > 1.0:
        lo, hi = max(0.0, lo - (hi - 1.0)), 1.0
    return lo, hi


def _err(a: float, b: float) -> float:
    return 0.0 if math.isnan(a) or math.isnan(b) else max(0.0, a - b)


def _lo(e) -> float:
    return e.value if math.isnan(e.low) else e.low


def _hi(e) -> float:
    return e.value if math.isnan(e.high) else e.high
