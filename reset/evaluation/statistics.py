"""Intervals, paired tests and sample sizes for comparing evaluated models on one held-out set.

Everything here is plain numpy / math (no scipy at run time); the tests check it against scipy and
statsmodels. A figure is an `Estimate` (value, interval, n, method); a paired comparison of two
models on the same units (prompts, instructions, grounded items) is a `PairedTest` (difference,
its interval, a two-sided p-value, n).

Rates (pass / fail per unit)
  wilson_interval(successes, n)          Wilson score interval (no continuity correction).
  rate_estimate(flags)                   the rate with its Wilson interval.
  mcnemar_exact(first, second)           exact McNemar: two-sided binomial test (p = 1/2) on the
                                         discordant pairs; counts of each kind of discordance.
  newcombe_paired_interval(table)        interval for the difference of two paired rates (Newcombe
                                         1998, method 10: Wilson intervals of the two margins,
                                         square-and-add with the continuity-corrected phi).
  paired_rate_test(first, second)        difference of rates: Newcombe interval, exact McNemar p.

Means (a score per unit)
  bootstrap_interval(values)             percentile bootstrap interval of the mean (seeded).
  mean_estimate(values)                  the mean with its bootstrap interval.
  paired_bootstrap(first, second)        mean of the paired differences, its percentile bootstrap
                                         interval (the units are resampled together) and a
                                         two-sided p-value: twice the smaller share of resampled
                                         differences on either side of 0 (with the usual +1), the
                                         smallest level at which the interval would exclude 0.

Sample size and power (two-sided tests)
  sample_size_paired_proportions(delta, discordant)   Connor (1987) for McNemar's test (exact=True:
                                                      enough for the exact test's power).
  power_paired_proportions(n, delta, discordant)      exact power of the exact McNemar test.
  sample_size_paired_means(delta, sd_diff)            normal approximation with Guenther's
                                                      correction (+ z_{a/2}^2 / 2) for the t-test.
  power_paired_means(n, delta, sd_diff)               the same approximation, as power.

Conventions: n = 0 gives a NaN value (a rate's Wilson interval is then the whole [0, 1]; a mean's
interval NaN); a bootstrap interval needs n >= 2 (NaN below). The percentile bootstrap under-covers
for small n (below about 20 units its 95% interval is too narrow): report n beside it. Seeds: every
bootstrap takes `seed` (default 0) and draws its resamples from numpy's default_rng(seed), so the
same input gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
_CHUNK = 1_000  # bootstrap resamples drawn at a time (bounds memory for long inputs)


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
    """`first` minus `second` on the same units: the difference, its interval and a two-sided p.

    test: "mcnemar-exact" (pass / fail; `wins` = units only `first` passes, `losses` = only
    `second`) or "paired-bootstrap" (scores; wins / losses count units with a positive / negative
    difference). interval: "newcombe" or "bootstrap-percentile"."""

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

    @property
    def significant(self) -> bool:
        """p below 1 - confidence (0.05 for 95% intervals)."""
        return not math.isnan(self.p_value) and self.p_value < 1.0 - self.confidence

    def format(self, digits: int = 2) -> str:
        """'+0.07 [0.01, 0.13] (p=0.03)'; 'n/a' without paired units."""
        if self.n == 0 or math.isnan(self.diff):
            return "n/a"
        d = digits
        return f"{self.diff:+.{d}f} [{self.low:+.{d}f}, {self.high:+.{d}f}] ({format_p(self.p_value)})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


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


def _binom_half_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, one rounding)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: first_only / second_only = discordant pairs of each kind."""

    first_only: int
    second_only: int
    p_value: float
    n: int


def mcnemar_exact_counts(first_only: int, second_only: int, n: int | None = None) -> McNemar:
    """Exact McNemar from the discordant counts: two-sided binomial test with p = 1/2 on
    first_only out of first_only + second_only (p = 1.0 when there is no discordant pair)."""
    if first_only < 0 or second_only < 0:
        raise ValueError("discordant counts must be >= 0")
    m = first_only + second_only
    p = 1.0 if m == 0 else min(1.0, 2.0 * _binom_half_cdf(min(first_only, second_only), m))
    return McNemar(first_only, second_only, p, m if n is None else n)


def mcnemar_exact(first: Sequence[bool], second: Sequence[bool]) -> McNemar:
    """Exact McNemar on paired pass / fail flags (same units, same order)."""
    _same_length(first, second)
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    return mcnemar_exact_counts(b, c, len(first))


def newcombe_paired_interval(both: int, first_only: int, second_only: int, neither: int,
                             confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Interval of p_first - p_second for paired rates (Newcombe 1998, method 10).

    p_first = (both + first_only) / n, p_second = (both + second_only) / n. Each margin gets its
    Wilson interval; the two are combined by square-and-add, corrected for the correlation of the
    margins (phi, with Newcombe's continuity correction). NaN without units."""
    counts = (both, first_only, second_only, neither)
    if min(counts) < 0:
        raise ValueError("counts must be >= 0")
    n = sum(counts)
    if n == 0:
        return math.nan, math.nan
    r1, r2 = both + first_only, both + second_only  # successes of first / second
    p1, p2 = r1 / n, r2 / n
    l1, u1 = wilson_interval(r1, n, confidence)
    l2, u2 = wilson_interval(r2, n, confidence)
    phi = 0.0
    if 0 < r1 < n and 0 < r2 < n:
        a = both * neither - first_only * second_only
        if a > n / 2:
            a -= n / 2
        elif a >= 0:
            a = 0.0
        phi = a / math.sqrt(r1 * (n - r1) * r2 * (n - r2))
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, low), min(1.0, high)


def paired_rate_test(first: Sequence[bool], second: Sequence[bool], confidence: float = CONFIDENCE) -> PairedTest:
    """rate(first) - rate(second) on the same units: Newcombe interval, exact McNemar p."""
    _same_length(first, second)
    pairs = list(zip(first, second, strict=True))
    both = sum(1 for x, y in pairs if x and y)
    b = sum(1 for x, y in pairs if x and not y)
    c = sum(1 for x, y in pairs if y and not x)
    n = len(pairs)
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, 0, "mcnemar-exact", "newcombe", 0, 0, confidence)
    low, high = newcombe_paired_interval(both, b, c, n - both - b - c, confidence)
    p = mcnemar_exact_counts(b, c, n).p_value
    return PairedTest((b - c) / n, low, high, p, n, "mcnemar-exact", "newcombe", b, c, confidence)


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


def _check_resamples(n_resamples: int) -> None:
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be >= 100, got {n_resamples}")


def bootstrap_interval(values: Sequence[float], *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (NaN for fewer than 2 values)."""
    _check_confidence(confidence)
    _check_resamples(n_resamples)
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


def paired_bootstrap(first: Sequence[float], second: Sequence[float], *, confidence: float = CONFIDENCE,
                     n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedTest:
    """mean(first - second) on the same units, its percentile bootstrap interval (units resampled
    as pairs) and a two-sided p-value: min(1, 2 (1 + min(#{d* <= 0}, #{d* >= 0})) / (B + 1)) over
    the B resampled mean differences d*. An interval that excludes 0 goes with p < 1 - confidence
    (up to the +1), so the verdict's interval and p never disagree."""
    _check_confidence(confidence)
    _check_resamples(n_resamples)
    _same_length(first, second)
    d = _as_array(first) - _as_array(second)
    n = int(d.size)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, 0, "paired-bootstrap", "bootstrap-percentile",
                          0, 0, confidence)
    diff = float(d.mean())
    if n < 2:
        return PairedTest(diff, math.nan, math.nan, math.nan, n, "paired-bootstrap", "bootstrap-percentile",
                          wins, losses, confidence)
    means = _resampled_means(d, n_resamples, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    tail = min(int((means <= 0).sum()), int((means >= 0).sum()))
    p = min(1.0, 2.0 * (tail + 1) / (n_resamples + 1))
    return PairedTest(diff, float(low), float(high), p, n, "paired-bootstrap", "bootstrap-percentile",
                      wins, losses, confidence)


def _same_length(first: Sequence[Any], second: Sequence[Any]) -> None:
    if len(first) != len(second):
        raise ValueError(f"paired samples differ in length: {len(first)} vs {len(second)}")


# ------------------------------------------------------------------------------- sample size
def _z_power(alpha: float, power: float) -> tuple[float, float]:
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / 2), nd.inv_cdf(power)


def _check_paired_props(delta: float, discordant: float) -> None:
    if not 0.0 < discordant <= 1.0:
        raise ValueError(f"discordant (the share of units whose verdict differs) must be in (0, 1], got {discordant}")
    if not 0.0 < abs(delta) <= discordant:
        raise ValueError(f"need 0 < |delta| <= discordant, got delta {delta}, discordant {discordant}")


def sample_size_paired_proportions(delta: float, discordant: float, *, alpha: float = 0.05,
                                   power: float = 0.8, exact: bool = False) -> int:
    """Paired units for McNemar's test to detect a rate difference `delta` (Connor 1987):

        n = (z_{1-a/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2

    psi = `discordant`: the share of units on which the two models' verdicts differ
    (p10 + p01; delta = p10 - p01). That n gives the normal-approximation test its power; the
    exact test is conservative (about 0.77 instead of 0.80 at that n). `exact=True`: the smallest
    n from there on whose exact-test power (power_paired_proportions) reaches `power`."""
    _check_paired_props(delta, discordant)
    za, zb = _z_power(alpha, power)
    n = math.ceil((za * math.sqrt(discordant) + zb * math.sqrt(discordant - delta * delta)) ** 2
                  / (delta * delta) - 1e-9)
    if exact:
        while power_paired_proportions(n, delta, discordant, alpha=alpha) < power:
            n += 1
    return n


def _log_binom_pmf(m: int, q: float) -> np.ndarray:
    """log P(K = k), k = 0..m, K ~ Binomial(m, q) with 0 < q < 1."""
    k = np.arange(m + 1)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log((m - k[1:] + 1) / k[1:]))])
    return log_comb + k * math.log(q) + (m - k) * math.log1p(-q)


def power_paired_proportions(n: int, delta: float, discordant: float, *, alpha: float = 0.05) -> float:
    """Exact power of the two-sided exact McNemar test with n paired units, when a share
    `discordant` of units differ and the rate difference is `delta` (computed, not simulated:
    the number of discordant units is Binomial(n, psi), and given m of them the first model's
    wins are Binomial(m, (psi + delta) / (2 psi)))."""
    _check_paired_props(delta, discordant)
    if n < 1:
        raise ValueError("n must be >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    q = (discordant + delta) / (2 * discordant)  # share of discordant units the first model wins
    if discordant >= 1.0:
        m_probs = np.zeros(n + 1)
        m_probs[n] = 1.0
    else:
        m_probs = np.exp(_log_binom_pmf(n, discordant))
    total = 0.0
    for m in range(1, n + 1):
        if m_probs[m] < 1e-300:
            continue
        # the rejection region given m discordant units: first-model wins <= c or >= m - c, with c the
        # largest count whose two-sided exact p-value 2 P(X <= c), X ~ Bin(m, 1/2), is <= alpha
        half_cdf = np.cumsum(np.exp(_log_binom_pmf(m, 0.5)))
        crit = int(np.searchsorted(half_cdf * 2, alpha * (1 + 1e-12), side="right")) - 1
        if crit < 0:
            continue
        if q <= 0.0 or q >= 1.0:
            reject = 1.0
        else:
            pmf = np.exp(_log_binom_pmf(m, q))
            reject = float(pmf[: crit + 1].sum() + pmf[m - crit:].sum())
        total += m_probs[m] * min(1.0, reject)
    return min(1.0, total)


def sample_size_paired_means(delta: float, sd_diff: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Paired units for a two-sided paired t-test to detect a mean difference `delta` when the
    paired differences have standard deviation `sd_diff`:

        n = ((z_{1-a/2} + z_{power}) sd / delta)^2 + z_{1-a/2}^2 / 2

    (the normal approximation plus Guenther's (1981) correction for the t distribution; within one
    unit of the exact noncentral-t answer)."""
    if sd_diff <= 0 or delta == 0:
        raise ValueError(f"need sd_diff > 0 and delta != 0, got {sd_diff}, {delta}")
    za, zb = _z_power(alpha, power)
    n = ((za + zb) * sd_diff / abs(delta)) ** 2 + za * za / 2
    return math.ceil(n - 1e-9)


def power_paired_means(n: int, delta: float, sd_diff: float, *, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test of the mean difference: the normal approximation with
    Guenther's correction, n taken as n - z_{1-a/2}^2 / 2 (the inverse of sample_size_paired_means;
    within 0.01 of the noncentral-t power from n = 20 on)."""
    if n < 2 or sd_diff <= 0:
        raise ValueError("need n >= 2 and sd_diff > 0")
    za, _ = _z_power(alpha, 0.5)
    shift = abs(delta) * math.sqrt(max(n - za * za / 2, 0.0)) / sd_diff
    nd = NormalDist()
    return nd.cdf(shift - za) + nd.cdf(-shift - za)
