"""The experiment's report across seeds: each arm's primary figures per seed, their mean and
spread, and the paired verdicts against the reference arm per seed.

    markdown, data = seed_report({seed: evaluate-step payload, ...})

A payload is what reset.steps.evaluate writes (its "summary" is reset.evaluation.Summary.to_dict):
with one seed the table shows that seed's figures with their 95% intervals; with several, the mean
over seeds with the per-seed spread (min - max and the standard deviation), and each seed's
paired verdicts, so a gain that holds in one seed only is visible as such.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from reset.evaluation.metrics import PRIMARY
from reset.evaluation.summary import AXIS_NAMES, arm_label

KEYS = (*PRIMARY, "answer_correct", "counterfactual_rate")


def _fmt(e: Mapping[str, Any]) -> str:
    v, lo, hi = e.get("value"), e.get("low"), e.get("high")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]" if isinstance(lo, float) and not math.isnan(lo) else f"{v:.2f}"


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def seed_report(payloads: Mapping[int, Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
    seeds = sorted(payloads)
    sums = {s: payloads[s]["summary"] for s in seeds}
    arms: list[str] = []
    for s in seeds:
        arms += [a for a in sums[s]["arms"] if a not in arms]
    keys = [k for k in KEYS if any(k in sums[s]["estimates"].get(a, {}) for s in seeds for a in arms)]
    ref = next((sums[s]["reference"] for s in seeds if sums[s].get("reference")), None)
    data: dict[str, Any] = {"seeds": seeds, "reference": ref, "arms": {}}
    for a in arms:
        data["arms"][a] = {}
        for k in keys:
            vals = [sums[s]["estimates"][a][k]["value"] for s in seeds
                    if a in sums[s]["estimates"] and k in sums[s]["estimates"][a]]
            vals = [v for v in vals if isinstance(v, int | float) and not math.isnan(v)]
            data["arms"][a][k] = {"per_seed": vals, "mean": statistics.fmean(vals) if vals else None,
                                  "sd": statistics.stdev(vals) if len(vals) > 1 else None}
    lines = [f"# The paper's arms ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}: {', '.join(map(str, seeds))})", ""]
    head = [AXIS_NAMES.get(k, k.replace("_", " ")) for k in keys]
    lines += ["| Arm | " + " | ".join(head) + " |", "|---|" + "---:|" * len(keys)]
    for a in arms:
        cells = []
        for k in keys:
            if len(seeds) == 1:
                e = sums[seeds[0]]["estimates"].get(a, {}).get(k)
                cells.append(_fmt(e) if e else "n/a")
            else:
                d = data["arms"][a][k]
                cells.append("n/a" if d["mean"] is None else
                             f"{d['mean']:.2f} (seeds {min(d['per_seed']):.2f}-{max(d['per_seed']):.2f}"
                             + (f", sd {d['sd']:.2f})" if d["sd"] is not None else ")"))
        lines.append(f"| {arm_label(a)} | " + " | ".join(cells) + " |")
    lines += ["", "With one seed: the value and its 95% interval. With several: the mean over seeds, their range "
                  "and standard deviation.", ""]
    if ref:
        lines += [f"## Paired against {arm_label(ref)} (difference, 95% interval, p), per seed", ""]
        for s in seeds:
            comps = sums[s].get("comparisons", {})
            for a in arms:
                if a not in comps:
                    continue
                parts = []
                for k in PRIMARY:
                    t = comps[a].get(k)
                    if t and t.get("n"):
                        parts.append(f"{AXIS_NAMES.get(k, k)} {t['diff']:+.2f} [{t['low']:+.2f}, {t['high']:+.2f}] "
                                     f"({_p(t['p_value'])})")
                if parts:
                    lines.append(f"- seed {s}: {arm_label(a)} vs {arm_label(ref)}: " + "; ".join(parts))
        lines.append("")
    data["verdicts"] = {s: payloads[s].get("verdicts", []) for s in seeds}
    return "\n".join(lines), data
