"""Intervals and paired tests for comparing evaluated models on one held-out set.

Everything here is plain numpy / math (no scipy at run time); the tests check it against scipy,
statsmodels and published worked examples. A figure is an `Estimate` (value, interval, n,
method); a paired comparison of two models on the same units (prompts, instructions, grounded
items) is a `PairedTest`: the difference, its interval and a two-sided p-value that come from ONE
test statistic, so they always agree (the interval excludes 0 exactly when p < 1 - confidence).

Rates (pass / fail per unit)
  wilson_interval(successes, n)       Wilson score interval (no continuity correction).
  rate_estimate(flags)                the rate with its Wilson interval.
  paired_rate_test(first, second)     difference of paired rates: the asymptotic McNemar test (the
                                      score test, no continuity correction) and Tango's (1998)
                                      score interval, which inverts that same score statistic
                                      (Fagerland, Lydersen & Laake 2013 / 2014 recommend both).
  paired_rate_test_counts(b, c, n)    the same from the discordant counts.

Means (a score per unit)
  bootstrap_interval(values)          percentile bootstrap interval of one arm's mean (seeded).
  mean_estimate(values)               the mean with its bootstrap interval.
  paired_mean_test(first, second)     the mean paired difference: paired t-test and its t interval.

Any PairedTest can be re-read at another level (`test.at(0.99)`: the gate's alpha spending) and
against a shifted null (`test.p_above(-0.03)`: a non-inferiority p-value), from the sufficient
statistics it keeps (the discordant counts, or the mean difference with its standard error).

  holm(p_values)                      Holm's step-down adjusted p-values (a family of comparisons).
  t_cdf(x, df), t_ppf(q, df)          Student's t distribution (df may be fractional or inf).

Conventions: n = 0 gives a NaN value (a rate's Wilson interval is then the whole [0, 1]; a mean's
interval NaN); a bootstrap interval and a paired t need n >= 2 (NaN below). Seeds: every
bootstrap takes `seed` (default 0) and draws its resamples from numpy's default_rng(seed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
_CHUNK = 1_000  # bootstrap resamples drawn at a time (bounds memory for long inputs)
_NORMAL = NormalDist()


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Estimate:
    """A figure with its interval. method: "wilson" or "bootstrap"."""

    value: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = CONFIDENCE

    def format(self, digits: int = 2) -> str:
        """'0.46 [0.33, 0.60]'; 'n/a' without data."""
        if self.n == 0 or math.isnan(self.value):
            return "n/a"
        if math.isnan(self.low):
            return f"{self.value:.{digits}f} [n/a]"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """`first` minus `second` on the same units: the difference, its interval and a two-sided p,
    all from one statistic.

    test "mcnemar-score" (pass / fail; `wins` = units only `first` passes, `losses` = only
    `second`), interval "tango-score"; or test "paired-t" (scores; wins / losses count units with a
    positive / negative difference), interval "t". `statistic` is the score z or the t at 0; `se`
    and `df` the standard error and degrees of freedom of a t (df inf: normal)."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int
    test: str
    interval: str
    wins: int
    losses: int
    confidence: float = CONFIDENCE
    statistic: float = math.nan
    se: float = math.nan
    df: float = math.inf

    @property
    def significant(self) -> bool:
        """p below 1 - confidence (0.05 for 95% intervals): the interval excludes 0."""
        return not math.isnan(self.p_value) and self.p_value < 1.0 - self.confidence

    def format(self, digits: int = 2) -> str:
        """'+0.07 [+0.01, +0.13] (p=0.030)'; 'n/a' without paired units."""
        if self.n == 0 or math.isnan(self.diff):
            return "n/a"
        d = digits
        if math.isnan(self.low):
            return f"{self.diff:+.{d}f} [n/a]"
        return f"{self.diff:+.{d}f} [{self.low:+.{d}f}, {self.high:+.{d}f}] ({format_p(self.p_value)})"

    def at(self, confidence: float) -> PairedTest:
        """The same comparison with its interval at another confidence level (p is unchanged)."""
        _check_confidence(confidence)
        if self.n == 0 or math.isnan(self.diff):
            return replace(self, confidence=confidence)
        if self.test == "mcnemar-score":
            low, high = tango_interval(self.wins, self.losses, self.n, confidence)
        else:
            low, high = _t_interval(self.diff, self.se, self.df, confidence)
        return replace(self, low=low, high=high, confidence=confidence)

    def p_above(self, delta0: float = 0.0) -> float:
        """One-sided p-value of H0: difference <= delta0 against H1: difference > delta0 (delta0 =
        -margin: non-inferiority; 0: superiority). Agrees with the intervals: the lower end of the
        two-sided level-(1 - 2a) interval is above delta0 exactly when this p < a."""
        if self.n == 0 or math.isnan(self.diff):
            return math.nan
        if self.test == "mcnemar-score":
            return 1.0 - _NORMAL.cdf(tango_z(self.wins, self.losses, self.n, delta0))
        if not self.se > 0:  # every paired difference equal: the difference is known exactly
            return 0.0 if self.diff > delta0 else 1.0
        return 1.0 - t_cdf((self.diff - delta0) / self.se, self.df)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: df inf (a normal statistic) as None."""
        d = asdict(self)
        d["df"] = None if math.isinf(self.df) else self.df
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairedTest:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: (math.inf if k == "df" and v is None else v) for k, v in d.items() if k in names})


def format_p(p: float) -> str:
    """'p<0.001', 'p<0.01', 'p=0.046', 'p=0.31'."""
    if math.isnan(p):
        return "p=n/a"
    if p < 0.001:
        return "p<0.001"
    if p < 0.01:
        return "p<0.01"
    return f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided normal quantile of a confidence level (1.959964 for 0.95)."""
    _check_confidence(confidence)
    return _NORMAL.inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


# ------------------------------------------------------------------------ Student's t, plainly
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with `df` degrees of freedom (df > 0, fractional allowed; inf: normal)."""
    if math.isnan(x) or math.isnan(df):
        return math.nan
    if math.isinf(df):
        return _NORMAL.cdf(x)
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(x):
        return 1.0 if x > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + x * x))
    return 1.0 - tail if x > 0 else tail


@functools.lru_cache(maxsize=4096)
def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t (bisection on t_cdf to 1e-12; inf df: normal)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if math.isinf(df):
        return _NORMAL.inv_cdf(q)
    if q == 0.5:
        return 0.0
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > q:
        lo *= 2.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2.0


def _t_interval(diff: float, se: float, df: float, confidence: float) -> tuple[float, float]:
    if math.isnan(se):
        return math.nan, math.nan
    if se == 0:
        return diff, diff
    half = t_ppf(1.0 - (1.0 - confidence) / 2.0, df) * se
    return diff - half, diff + half


# -------------------------------------------------------------------------------------- rates
def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of successes / n. n = 0: (0.0, 1.0), nothing is known."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} / {n}")
    if n == 0:
        _check_confidence(confidence)
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact ends at 0 / n and n / n (the formula gives them up to rounding)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def rate_estimate(flags: Sequence[bool], confidence: float = CONFIDENCE) -> Estimate:
    """The share of True with its Wilson interval."""
    n = len(flags)
    k = sum(1 for f in flags if f)
    low, high = wilson_interval(k, n, confidence)
    return Estimate(k / n if n else math.nan, low, high, n, "wilson", confidence)


def tango_z(b: int, c: int, n: int, delta: float) -> float:
    """Tango's (1998) score statistic for H0: p_first - p_second = delta on n pairs, b of which
    only the first model passes and c only the second. At delta = 0 it is McNemar's statistic
    (b - c) / sqrt(b + c). Decreasing in delta."""
    if b < 0 or c < 0 or n < b + c or n <= 0:
        raise ValueError(f"need 0 <= b, c and b + c <= n > 0, got b={b}, c={c}, n={n}")
    if not -1.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [-1, 1], got {delta}")
    num = b - c - n * delta
    if delta == 0.0:
        return 0.0 if b + c == 0 else num / math.sqrt(b + c)
    # the constrained MLE of the second-only cell (the positive root of A x^2 + B x + C = 0)
    a_, b_ = 2.0 * n, -b - c + (2.0 * n - b + c) * delta
    c_ = -c * delta * (1.0 - delta)
    x = (-b_ + math.sqrt(max(b_ * b_ - 4.0 * a_ * c_, 0.0))) / (2.0 * a_)
    var = n * (2.0 * x + delta * (1.0 - delta))
    if var <= 0.0:
        return math.copysign(math.inf, num) if num else 0.0
    return num / math.sqrt(var)


def tango_interval(b: int, c: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Tango's score interval of p_first - p_second: every delta the two-sided score test at
    1 - confidence does not reject. NaN without pairs."""
    _check_confidence(confidence)
    if n == 0:
        return math.nan, math.nan
    z = z_value(confidence)
    d = (b - c) / n
    eps = 1e-12

    def root(lo: float, hi: float, target: float) -> float:
        # tango_z is decreasing: find delta in [lo, hi] with tango_z(delta) = target
        for _ in range(200):
            mid = (lo + hi) / 2.0
            if tango_z(b, c, n, mid) > target:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-13:
                break
        return (lo + hi) / 2.0

    low = -1.0 if tango_z(b, c, n, -1.0 + eps) <= z else root(-1.0 + eps, d, z)
    high = 1.0 if tango_z(b, c, n, 1.0 - eps) >= -z else root(d, 1.0 - eps, -z)
    return max(-1.0, low), min(1.0, high)


def paired_rate_test_counts(b: int, c: int, n: int, confidence: float = CONFIDENCE) -> PairedTest:
    """rate(first) - rate(second) from the discordant counts: McNemar's score test and Tango's
    interval (they agree: the interval excludes 0 exactly when p < 1 - confidence)."""
    if b < 0 or c < 0 or n < b + c:
        raise ValueError(f"need 0 <= b, c and b + c <= n, got b={b}, c={c}, n={n}")
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, 0, "mcnemar-score", "tango-score", 0, 0,
                          confidence)
    z0 = tango_z(b, c, n, 0.0)
    p = 2.0 * (1.0 - _NORMAL.cdf(abs(z0)))
    low, high = tango_interval(b, c, n, confidence)
    return PairedTest((b - c) / n, low, high, min(1.0, p), n, "mcnemar-score", "tango-score", b, c, confidence,
                      statistic=z0)


def paired_rate_test(first: Sequence[bool], second: Sequence[bool], confidence: float = CONFIDENCE) -> PairedTest:
    """rate(first) - rate(second) on the same units (same order)."""
    _same_length(first, second)
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    return paired_rate_test_counts(b, c, len(first), confidence)


# -------------------------------------------------------------------------------------- means
def _resampled_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` bootstrap resamples (rows drawn with replacement) of `values`."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        out[start:start + size] = values[idx].mean(axis=1)
    return out


def _as_array(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError("expected a flat sequence of numbers")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values must be finite numbers")
    return arr


def bootstrap_interval(values: Sequence[float], *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (NaN for fewer than 2 values)."""
    _check_confidence(confidence)
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be >= 100, got {n_resamples}")
    arr = _as_array(values)
    if arr.size < 2:
        return math.nan, math.nan
    means = _resampled_means(arr, n_resamples, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mean_estimate(values: Sequence[float], *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                  seed: int = 0) -> Estimate:
    """The mean with its percentile bootstrap interval."""
    arr = _as_array(values)
    low, high = bootstrap_interval(arr, confidence=confidence, n_resamples=n_resamples, seed=seed)
    value = float(arr.mean()) if arr.size else math.nan
    return Estimate(value, low, high, int(arr.size), "bootstrap", confidence)


def paired_mean_test(first: Sequence[float], second: Sequence[float], confidence: float = CONFIDENCE) -> PairedTest:
    """mean(first - second) on the same units: the paired t-test and its t interval (one statistic,
    so the interval excludes 0 exactly when p < 1 - confidence). n < 2: no interval, no p."""
    _check_confidence(confidence)
    _same_length(first, second)
    d = _as_array(first) - _as_array(second)
    n = int(d.size)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, 0, "paired-t", "t", 0, 0, confidence)
    diff = float(d.mean())
    if n < 2:
        return PairedTest(diff, math.nan, math.nan, math.nan, n, "paired-t", "t", wins, losses, confidence)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0 or se < 1e-12 * max(1.0, abs(diff)):  # every difference equal (up to rounding)
        p, stat, se = (1.0 if diff == 0.0 else 0.0), (0.0 if diff == 0.0 else math.copysign(math.inf, diff)), 0.0
    else:
        stat = diff / se
        p = min(1.0, 2.0 * (1.0 - t_cdf(abs(stat), n - 1)))
    low, high = _t_interval(diff, se, n - 1, confidence)
    return PairedTest(diff, low, high, p, n, "paired-t", "t", wins, losses, confidence, statistic=stat, se=se,
                      df=float(n - 1))


def _same_length(first: Sequence[Any], second: Sequence[Any]) -> None:
    if len(first) != len(second):
        raise ValueError(f"paired samples differ in length: {len(first)} vs {len(second)}")


# ------------------------------------------------------------------------------- multiplicity
def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the input's order (NaN stays NaN and does not
    count towards the family): reject the i-th hypothesis at level a when its adjusted p <= a."""
    idx = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
