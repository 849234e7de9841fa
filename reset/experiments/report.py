"""The experiment's report across seeds: the method, not one trained model, is the unit.

    markdown, data = seed_report({seed: evaluate-step payload, ...})

A payload is what reset.steps.evaluate writes: "summary" (reset.evaluation.Summary.to_dict) and
"units" (arm -> primary metric -> {unit: value}). For every arm and axis the paired differences
to the reference arm of the same seed, d[seed, unit], are pooled by reset.evaluation.pooled (crossed
seed and unit effects: one interval and p that count both sources of variation), with:

- the primary hypothesis, pre-declared: ReSet against MTL, non-inferior on both axes and superior
  on at least one (the promotion gate's rule, reset.evaluation.gate, on the pooled comparisons);
- every other arm x axis comparison, and ReSet against the control (MTL plus the same steps on the
  reference answers), with raw and Holm-adjusted p over that family;
- per seed: each arm's figures and its paired differences, their spread (SD over seeds);
- for instruction following, Mantel-Haenszel's stratified McNemar across seeds (it treats every
  seed x prompt pair as independent: a lower bound on the uncertainty, shown beside the pooled p);
- what the design can detect: the difference the pooled test sees with 80% power, from the
  observed variance components.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reset.evaluation.gate import GateRule, decide
from reset.evaluation.metrics import PRIMARY
from reset.evaluation.pooled import PooledTest, pooled_paired, stratified_mcnemar
from reset.evaluation.statistics import format_p, holm, t_ppf
from reset.evaluation.summary import AXIS_NAMES, arm_label

KEYS = (*PRIMARY, "answer_correct", "counterfactual_rate")
PRIMARY_ARM, CONTROL = "reset", "control"


def _fmt(e: Mapping[str, Any]) -> str:
    v, lo, hi = e.get("value"), e.get("low"), e.get("high")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]" if isinstance(lo, float) and not math.isnan(lo) else f"{v:.2f}"


def by_seed(payloads: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Evaluate payloads by their seed. Two of one seed (the seeds' loop and the trade-off arms' own,
    experiment.tradeoff_seed_count) are merged: their arms, estimates, metrics and units; the reference
    from the one that had it."""
    out: dict[int, dict[str, Any]] = {}
    for i, p in enumerate(payloads):
        seed = int(p["seed"]) if p.get("seed") is not None else i
        if seed not in out:
            out[seed] = {**p, "summary": dict(p["summary"]), "units": dict(p.get("units", {}))}
            continue
        have, theirs = out[seed]["summary"], p["summary"]
        have["arms"] = have["arms"] + [a for a in theirs["arms"] if a not in have["arms"]]
        have["estimates"] = {**theirs["estimates"], **have["estimates"]}
        keys = {m["key"] for m in have.get("metrics", [])}
        have["metrics"] = have.get("metrics", []) + [m for m in theirs.get("metrics", []) if m["key"] not in keys]
        have["reference"] = have.get("reference") or theirs.get("reference")
        out[seed]["units"] = {**p.get("units", {}), **out[seed]["units"]}
    return out


def _paired(units: Mapping[int, Mapping[str, Any]], arm: str, ref: str, key: str, is_rate: bool
            ) -> tuple[np.ndarray, list[tuple[int, int, int]], list[int]] | None:
    """d[seed, unit] = arm - ref on the units both have, over the seeds that have both arms (the
    trade-off arms may have fewer), per seed (b, c, n) for pass / fail metrics, and those seeds;
    None when no seed has both."""
    per, used = [], []
    for s in sorted(units):
        mine, theirs = units[s].get(arm, {}).get(key), units[s].get(ref, {}).get(key)
        if mine and theirs:
            per.append((mine, theirs))
            used.append(s)
    if not per:
        return None
    common = sorted(set.intersection(*(set(m) & set(t) for m, t in per)))
    if len(common) < 2:
        return None
    d = np.array([[float(m[u]) - float(t[u]) for u in common] for m, t in per])
    tables = [(sum(1 for u in common if m[u] and not t[u]), sum(1 for u in common if t[u] and not m[u]), len(common))
              for m, t in per] if is_rate else []
    return d, tables, used


def detectable(p: PooledTest, power: float = 0.8, alpha: float = 0.05) -> float:
    """The true difference the pooled two-sided test at `alpha` detects with `power` (normal-t
    approximation on its standard error and degrees of freedom)."""
    if not p.se or math.isnan(p.se):
        return math.nan
    df = p.df if p.df < 1e6 else math.inf
    return (t_ppf(1 - alpha / 2, df) + t_ppf(power, df)) * p.se


def seed_report(payloads: Mapping[int, Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
    seeds = sorted(payloads)
    sums = {s: payloads[s]["summary"] for s in seeds}
    units = {s: payloads[s].get("units", {}) for s in seeds}
    arms: list[str] = []
    for s in seeds:
        arms += [a for a in sums[s]["arms"] if a not in arms]
    keys = [k for k in KEYS if any(k in sums[s]["estimates"].get(a, {}) for s in seeds for a in arms)]
    ref = next((sums[s]["reference"] for s in seeds if sums[s].get("reference")), None)
    data: dict[str, Any] = {"seeds": seeds, "reference": ref, "arms": {}, "pooled": {}, "family": [],
                            "primary": None, "detectable": {}, "seeds_of": {}}
    for a in arms:
        data["arms"][a] = {}
        for k in keys:
            got = [(s, sums[s]["estimates"][a][k]["value"]) for s in seeds
                   if a in sums[s]["estimates"] and k in sums[s]["estimates"][a]]
            got = [(s, v) for s, v in got if isinstance(v, int | float) and not math.isnan(v)]
            vals = [v for _, v in got]
            data["arms"][a][k] = {"per_seed": vals, "seeds": [s for s, _ in got],
                                  "mean": statistics.fmean(vals) if vals else None,
                                  "sd": statistics.stdev(vals) if len(vals) > 1 else None}
    # pooled paired comparisons: every arm against the reference, and ReSet against the control
    pooled: dict[str, dict[str, PooledTest]] = {}
    mh: dict[str, dict[str, Any]] = {}
    pairs = [(a, ref) for a in arms if ref and a != ref]
    if PRIMARY_ARM in arms and CONTROL in arms:
        pairs.append((PRIMARY_ARM, CONTROL))
    kinds = {m["key"]: m["kind"] for s in seeds for m in sums[s].get("metrics", [])}
    for a, b in pairs:
        name = a if b == ref else f"{a} vs {b}"
        for k in PRIMARY:
            got = _paired(units, a, b, k, kinds.get(k) == "rate")
            if got is None:
                continue
            d, tables, used = got
            pooled.setdefault(name, {})[k] = pooled_paired(d)
            data["seeds_of"][name] = used
            if tables:
                mh.setdefault(name, {})[k] = stratified_mcnemar(tables)
    # an arm that never ran on a seed the reference ran on (a run form whose tradeoff_seeds are not some of its seeds)
    data["unpaired"] = [a for a, b in pairs if b == ref and a not in pooled]
    data["pooled"] = {n: {k: p.to_dict() for k, p in ps.items()} for n, ps in pooled.items()}
    data["stratified_mcnemar"] = {n: {k: t.to_dict() for k, t in ts.items()} for n, ts in mh.items()}
    primary = None
    if PRIMARY_ARM in pooled and len(pooled[PRIMARY_ARM]) == len(PRIMARY):
        rule = GateRule(spending=False)
        primary = decide({k: p.paired_test() for k, p in pooled[PRIMARY_ARM].items()}, rule,
                         against=arm_label(ref or "mtl"))
        data["primary"] = {**primary.to_dict(), "rule": rule.describe()}
        data["detectable"] = {k: detectable(p) for k, p in pooled[PRIMARY_ARM].items()}
    family = [(n, k, p) for n, ps in pooled.items() if n != PRIMARY_ARM for k, p in ps.items()]
    adjusted = holm([p.p_value for _, _, p in family])
    data["family"] = [{"comparison": n, "axis": k, "diff": p.diff, "low": p.low, "high": p.high,
                       "p": p.p_value, "p_holm": ph} for (n, k, p), ph in zip(family, adjusted, strict=True)]
    return _markdown(seeds, arms, keys, ref, sums, data, pooled, mh, primary, family, adjusted), data


def _who(name: str, ref: str | None) -> str:
    if " vs " in name:
        a, b = name.split(" vs ")
        return f"{arm_label(a)} vs {arm_label(b)}"
    return f"{arm_label(name)} vs {arm_label(ref or '')}"


def _only(used: Sequence[int], seeds: Sequence[int]) -> str:
    """" (seeds 0, 1 only)" for a comparison made on some of the report's seeds."""
    if list(used) == list(seeds):
        return ""
    return f" (seed{'s' if len(used) > 1 else ''} {', '.join(map(str, used))} only)"


def _ci(p: PooledTest) -> str:
    return f"{p.diff:+.3f} [{p.low:+.3f}, {p.high:+.3f}]"


def _markdown(seeds, arms, keys, ref, sums, data, pooled, mh, primary, family, adjusted) -> str:
    n = len(seeds)
    lines = [f"# The paper's arms ({n} seed{'s' if n > 1 else ''}: {', '.join(map(str, seeds))})", ""]
    if primary is not None:
        lines += [f"**Primary hypothesis** ({data['primary']['rule']}), pooled over the seeds: "
                  f"**{arm_label(PRIMARY_ARM)} {'passes' if primary.passed else 'does not pass'}**: {primary.reason}.",
                  ""]
        for k, p in pooled[PRIMARY_ARM].items():
            lines.append(f"- {AXIS_NAMES.get(k, k)}: {_ci(p)} ({format_p(p.p_value)}); per seed "
                         + ", ".join(f"{x:+.3f}" for x in p.per_seed)
                         + (f" (SD over seeds {p.seed_sd:.3f})" if n > 1 else " (one seed: one trained model)")
                         + f"; detectable with 80% power: {data['detectable'][k]:.3f}")
        lines.append("")
    for a in data["unpaired"]:
        lines += [f"**{arm_label(a)} is not compared with {arm_label(ref or '')}**: no seed has both (the run form's "
                  "tradeoff_seeds must be some of its seeds).", ""]
    head = [AXIS_NAMES.get(k, k.replace("_", " ")) for k in keys]
    lines += ["| Arm | " + " | ".join(head) + " |", "|---|" + "---:|" * len(keys)]
    for a in arms:
        cells = []
        for k in keys:
            d = data["arms"][a][k]
            if n == 1 or len(d["seeds"]) == 1:  # one seed (a trade-off arm, tradeoff_seed_count): its interval
                e = sums[d["seeds"][0] if d["seeds"] else seeds[0]]["estimates"].get(a, {}).get(k)
                cells.append((_fmt(e) if e else "n/a") + (f" (seed {d['seeds'][0]} only)" if n > 1 else ""))
            else:
                cells.append("n/a" if d["mean"] is None else
                             f"{d['mean']:.2f} (seeds {min(d['per_seed']):.2f}-{max(d['per_seed']):.2f}"
                             + (f", sd {d['sd']:.2f})" if d["sd"] is not None else ")"))
        lines.append(f"| {arm_label(a)} | " + " | ".join(cells) + " |")
    lines += ["", "With one seed: the value and its 95% interval. With several: the mean over seeds, their range "
                  "and standard deviation.", ""]
    if pooled:
        lines += [f"## Paired differences pooled over {n} seed{'s' if n > 1 else ''} (95% interval, p; "
                  "Holm over every comparison but the primary one)", "",
                  "| Comparison | Axis | Pooled difference [95%] | p | Holm p | per seed | SD over seeds | "
                  "stratified McNemar p |", "|---|---|---:|---:|---:|---|---:|---:|"]
        holm_of = {(c, k): ph for (c, k, _), ph in zip(family, adjusted, strict=True)}
        for name, ps in pooled.items():
            for k, p in ps.items():
                t = mh.get(name, {}).get(k)
                lines.append(f"| {_who(name, ref)} | {AXIS_NAMES.get(k, k)} | {_ci(p)} | {format_p(p.p_value)} | "
                             + (format_p(holm_of[(name, k)]) if (name, k) in holm_of else "primary")
                             + " | " + ", ".join(f"{x:+.3f}" for x in p.per_seed)
                             + _only(data["seeds_of"].get(name, seeds), seeds)
                             + f" | {'' if math.isnan(p.seed_sd) else f'{p.seed_sd:.3f}'} | "
                             + (format_p(t.p_value) if t is not None else "") + " |")
        lines += ["", "Pooled: a linear mixed model with crossed seed and prompt effects (reset.evaluation.pooled); "
                      "its interval counts the variation between trained models, which a single run's p-value "
                      "does not. The stratified McNemar test treats every seed x prompt pair as independent.", ""]
        if any(list(u) != list(seeds) for u in data["seeds_of"].values()):
            lines += ["A comparison marked \"only\" had fewer seeds (experiment.tradeoff_seed_count); on one seed it "
                      "is a paired t over the prompts, whose interval does not count the variation between trained "
                      "models: it describes that model, not the method.", ""]
    return "\n".join(lines)
