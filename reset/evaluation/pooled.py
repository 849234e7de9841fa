"""Several seeds of the same experiment pooled: the method, not one trained model, is the unit of
inference.

Each seed trains every arm again (training, sampling and the selection change with it) and
evaluates it on the same held-out units, so the paired differences d[s, u] (arm minus reference,
seed s, unit u) form a crossed design: a seed effect (this seed's models happened to differ more
or less), a unit effect (some prompts gain in every seed) and noise. The pooled difference is the
mean of d; its standard error counts both effects (a linear mixed model with crossed random seed
and unit intercepts; on this balanced design its REML fit is the two-way ANOVA estimator below,
checked against statsmodels' MixedLM in the tests):

    Var(mean) = s2_seed / S + s2_unit / U + s2_noise / (S U)
    s2_seed = (MS_seed - MS_noise) / U,  s2_unit = (MS_unit - MS_noise) / S  (each at least 0)

with a t interval and test on Satterthwaite's degrees of freedom (one statistic: interval and p
agree). With one seed it is the paired t-test on the units (the seed effect cannot be estimated:
the result is about one trained model, and says so). Pass / fail (instruction following) uses the
same model on d in {-1, 0, 1}; `stratified_mcnemar` adds the Mantel-Haenszel test across seeds
(the seeds as strata: it counts every seed x prompt pair as independent, so it is the minimum, not
the verdict).

    p = pooled_paired(d)                    # d: array (seeds, units)
    p.diff, p.low, p.high, p.p_value, p.per_seed, p.seed_sd
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from reset.evaluation.statistics import (
    CONFIDENCE,
    PairedTest,
    paired_mean_test,
    paired_rate_test_counts,
    t_cdf,
    t_ppf,
)


@dataclass(frozen=True)
class PooledTest:
    """The pooled paired difference over seeds and units, its interval, p, and the per-seed view."""

    diff: float
    low: float
    high: float
    p_value: float
    seeds: int
    units: int
    se: float
    df: float
    method: str
    per_seed: list[float] = field(default_factory=list)
    components: dict[str, float] = field(default_factory=dict)  # seed, unit, noise variances
    confidence: float = CONFIDENCE

    @property
    def seed_sd(self) -> float:
        """The standard deviation of the per-seed differences (NaN with one seed)."""
        return float(np.std(self.per_seed, ddof=1)) if len(self.per_seed) > 1 else math.nan

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_value) and self.p_value < 1.0 - self.confidence

    def paired_test(self) -> PairedTest:
        """As a PairedTest (a t with the pooled standard error): `at()` and `p_above()` work on it."""
        return PairedTest(self.diff, self.low, self.high, self.p_value, self.seeds * self.units, "pooled-t",
                          "t", 0, 0, self.confidence, statistic=self.diff / self.se if self.se else math.nan,
                          se=self.se, df=self.df)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seed_sd": self.seed_sd}


def pooled_paired(d: Sequence[Sequence[float]] | np.ndarray, confidence: float = CONFIDENCE) -> PooledTest:
    """The pooled paired difference of an array d[seed, unit] (see the module docstring)."""
    arr = np.asarray(d, dtype=float)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise ValueError(f"need an array of (seeds, units) with at least 2 units, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("paired differences must be finite numbers")
    s, u = arr.shape
    per_seed = [float(x) for x in arr.mean(axis=1)]
    if s == 1:
        t = paired_mean_test(arr[0], np.zeros(u), confidence)
        return PooledTest(t.diff, t.low, t.high, t.p_value, 1, u, t.se, t.df, "paired-t (one seed)", per_seed,
                          {"noise": float(arr[0].var(ddof=1))}, confidence)
    grand = float(arr.mean())
    rows, cols = arr.mean(axis=1, keepdims=True), arr.mean(axis=0, keepdims=True)
    df_s, df_u, df_e = s - 1, u - 1, (s - 1) * (u - 1)
    ms_s = float(u * ((rows - grand) ** 2).sum() / df_s)
    ms_u = float(s * ((cols - grand) ** 2).sum() / df_u)
    ms_e = float(((arr - rows - cols + grand) ** 2).sum() / df_e)
    # Var(mean) as a combination of mean squares; a variance component below 0 is set to 0
    coef = {"s": 0.0, "u": 0.0, "e": 1.0 / (s * u)}
    if ms_s > ms_e:
        coef["s"] += 1.0 / (s * u)
        coef["e"] -= 1.0 / (s * u)
    if ms_u > ms_e:
        coef["u"] += 1.0 / (s * u)
        coef["e"] -= 1.0 / (s * u)
    ms = {"s": ms_s, "u": ms_u, "e": ms_e}
    dfs = {"s": df_s, "u": df_u, "e": df_e}
    var = sum(coef[k] * ms[k] for k in ms)
    components = {"seed": max(0.0, (ms_s - ms_e) / u), "unit": max(0.0, (ms_u - ms_e) / s), "noise": ms_e}
    method = "crossed seed x unit (two-way ANOVA / LMM)"
    if var <= 1e-300:
        p = 1.0 if grand == 0 else 0.0
        return PooledTest(grand, grand, grand, p, s, u, 0.0, math.inf, method, per_seed, components, confidence)
    denom = sum((coef[k] * ms[k]) ** 2 / dfs[k] for k in ms if coef[k])
    df = var * var / denom if denom > 0 else math.inf
    se = math.sqrt(var)
    t = grand / se
    p = min(1.0, 2.0 * (1.0 - t_cdf(abs(t), df)))
    half = t_ppf(1.0 - (1.0 - confidence) / 2.0, df) * se
    return PooledTest(grand, grand - half, grand + half, p, s, u, se, df, method, per_seed, components, confidence)


def stratified_mcnemar(tables: Sequence[tuple[int, int, int]], confidence: float = CONFIDENCE) -> PairedTest:
    """Mantel-Haenszel's test across strata (seeds) for paired pass / fail: per stratum (b, c, n) =
    (units only the first passes, only the second passes, units). With each pair its own stratum
    the Mantel-Haenszel statistic is McNemar's on the summed counts, (sum b - sum c)^2 / sum (b + c);
    the interval is Tango's on the summed counts (the same score statistic)."""
    if not tables:
        raise ValueError("stratified_mcnemar: no strata")
    b = sum(t[0] for t in tables)
    c = sum(t[1] for t in tables)
    n = sum(t[2] for t in tables)
    t = paired_rate_test_counts(b, c, n, confidence)
    return PairedTest(t.diff, t.low, t.high, t.p_value, t.n, "mantel-haenszel", t.interval, t.wins, t.losses,
                      confidence, statistic=t.statistic)
