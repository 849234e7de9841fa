"""reset.evaluation.statistics against reference implementations (scipy, statsmodels), published
worked examples, hand-checked edge cases and simulation (coverage, type I error); that each test
and its interval agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from reset.evaluation import statistics as S

Z95 = 1.959963984540054


# ------------------------------------------------------------------------------------- Wilson
@pytest.mark.parametrize("k,n", [(1, 10), (5, 10), (23, 50), (3, 300), (150, 300), (299, 300), (7, 13)])
def test_wilson_matches_statsmodels_and_scipy(k, n):
    low, high = S.wilson_interval(k, n)
    ref = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert (low, high) == pytest.approx(ref, abs=1e-12)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    low90, high90 = S.wilson_interval(k, n, confidence=0.9)
    assert (low90, high90) == pytest.approx(proportion_confint(k, n, alpha=0.1, method="wilson"), abs=1e-12)


def test_wilson_edge_cases_by_hand():
    # 0/n: [0, z^2 / (n + z^2)]; n/n: [n / (n + z^2), 1]
    assert S.wilson_interval(0, 10) == (0.0, pytest.approx(Z95**2 / (10 + Z95**2)))
    assert S.wilson_interval(10, 10) == (pytest.approx(10 / (10 + Z95**2)), 1.0)
    assert S.wilson_interval(0, 0) == (0.0, 1.0)  # no data: nothing is known
    e = S.rate_estimate([])
    assert e.n == 0 and math.isnan(e.value) and e.format() == "n/a"
    e = S.rate_estimate([True] * 23 + [False] * 27)  # the prototype's MTL row: 0.46 [0.33, 0.60]
    assert e.format() == "0.46 [0.33, 0.60]" and e.method == "wilson"
    with pytest.raises(ValueError):
        S.wilson_interval(3, 2)
    with pytest.raises(ValueError):
        S.wilson_interval(1, 2, confidence=1.0)


# ------------------------------------------------------ McNemar's score test + Tango's interval
# Published worked examples of Tango's (1998) score interval (a, b, c, d; level) -> (low, high):
# Tango 1998 Table VII and Table V, Agresti & Min 2005, Fagerland, Lydersen & Laake 2014 (airway
# hyper-responsiveness), Tang et al. 2010; the values as the ratesci R package's tests reproduce them.
TANGO_PUBLISHED = [
    ((4, 9, 3, 16), 0.95, (-0.027, 0.390), 3),
    ((43, 0, 1, 0), 0.90, (-0.096, 0.037), 3),
    ((53, 16, 8, 9), 0.95, (-0.020, 0.207), 3),
    ((1, 1, 7, 12), 0.95, (-0.517, -0.026), 3),
    ((8, 3, 1, 2), 0.95, (-0.1670, 0.4327), 4),
]


@pytest.mark.parametrize("table,level,ref,digits", TANGO_PUBLISHED)
def test_tango_interval_matches_published_worked_examples(table, level, ref, digits):
    a, b, c, d = table
    low, high = S.tango_interval(b, c, a + b + c + d, level)
    assert (round(low, digits), round(high, digits)) == ref


@pytest.mark.parametrize("b,c", [(0, 1), (1, 0), (5, 2), (2, 5), (6, 16), (20, 0), (13, 13), (40, 25), (3, 30)])
def test_score_mcnemar_matches_statsmodels_asymptotic_without_correction(b, c):
    first = [True] * b + [False] * c + [True] * 7 + [False] * 11
    second = [False] * b + [True] * c + [True] * 7 + [False] * 11
    t = S.paired_rate_test(first, second)
    assert (t.wins, t.losses, t.n) == (b, c, len(first)) and t.diff == pytest.approx((b - c) / len(first))
    ref = sm_mcnemar([[7, b], [c, 11]], exact=False, correction=False)
    assert t.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert t.statistic ** 2 == pytest.approx(ref.statistic, rel=1e-9)


def test_score_test_and_tango_interval_always_agree():
    # every table of 60 pairs: the interval excludes 0 exactly when p < 0.05 (one statistic), and
    # at any level the one-sided p of "difference <= d0" is below a exactly when the lower end of
    # the two-sided 1 - 2a interval is above d0
    n = 60
    for b in range(0, 31):
        for c in range(0, 31 - b):
            t = S.paired_rate_test_counts(b, c, n)
            if b + c == 0:
                assert t.p_value == 1.0 and t.low < 0 < t.high
                continue
            assert (t.low > 0 or t.high < 0) == (t.p_value < 0.05), (b, c, t)
            for d0 in (-0.05, 0.0, 0.04):
                assert (t.at(0.95).low > d0) == (t.p_above(d0) < 0.025), (b, c, d0)
                assert (t.at(0.99).low > d0) == (t.p_above(d0) < 0.005), (b, c, d0)


def test_tango_interval_is_antisymmetric_bounded_and_covers():
    for b, c, n in [(10, 0, 20), (0, 20, 20), (3, 9, 57), (0, 0, 7), (7, 7, 14)]:
        low, high = S.tango_interval(b, c, n)
        low2, high2 = S.tango_interval(c, b, n)  # swap the two models
        assert (low2, high2) == pytest.approx((-high, -low), abs=1e-9)
        assert -1.0 <= low <= (b - c) / n <= high <= 1.0
    assert all(math.isnan(x) for x in S.tango_interval(0, 0, 0))
    rng = np.random.default_rng(7)
    probs = np.array([0.35, 0.12, 0.05, 0.48])  # both, first only, second only, neither
    true = probs[1] - probs[2]
    tables = rng.multinomial(100, probs, size=2000)
    hits = sum(S.tango_interval(int(t[1]), int(t[2]), 100)[0] <= true <= S.tango_interval(int(t[1]), int(t[2]), 100)[1]
               for t in tables)
    assert 0.93 <= hits / 2000 <= 0.97


def test_score_mcnemar_rejects_a_true_null_about_5_percent_of_the_time():
    rng = np.random.default_rng(3)
    tables = rng.multinomial(300, [0.43, 0.07, 0.07, 0.43], size=3000)
    rate = np.mean([S.paired_rate_test_counts(int(t[1]), int(t[2]), 300).p_value < 0.05 for t in tables])
    assert 0.035 <= rate <= 0.065


def test_paired_rate_edge_cases():
    assert S.paired_rate_test([True, False], [True, False]).p_value == 1.0  # no discordant pair
    t = S.paired_rate_test([], [])
    assert t.n == 0 and math.isnan(t.diff) and t.format() == "n/a"
    with pytest.raises(ValueError):
        S.paired_rate_test([True], [True, False])
    with pytest.raises(ValueError):
        S.paired_rate_test_counts(3, 4, 5)


# ------------------------------------------------------------------- the paired t and Student's t
@pytest.mark.parametrize("x,df", [(1.3, 4), (-2.1, 2.5), (0.4, 100), (3.0, 1), (-0.2, 7.3), (5.0, 30), (-8.0, 3)])
def test_t_distribution_matches_scipy(x, df):
    assert S.t_cdf(x, df) == pytest.approx(stats.t.cdf(x, df), abs=1e-12)
    for q in (0.005, 0.025, 0.2, 0.8, 0.975, 0.9995):
        assert S.t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9, abs=1e-9)
    assert S.t_cdf(x, math.inf) == pytest.approx(stats.norm.cdf(x), abs=1e-12)


def test_paired_t_matches_scipy_and_its_interval_agrees_with_its_p():
    rng = np.random.default_rng(4)
    for shift in (0.0, 0.02, 0.05, 0.1):
        a = rng.uniform(0, 1, 150)
        b = np.clip(a + rng.normal(shift, 0.2, 150), 0, 1)
        t = S.paired_mean_test(b, a)
        ref = stats.ttest_rel(b, a)
        ci = ref.confidence_interval(0.95)
        assert t.p_value == pytest.approx(ref.pvalue, rel=1e-9)
        assert (t.low, t.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert (t.low > 0 or t.high < 0) == (t.p_value < 0.05)
        assert t.wins == int((b > a).sum()) and t.losses == int((b < a).sum())
        # one-sided: scipy's "greater" alternative against a shifted null
        d0 = -0.03
        assert t.p_above(d0) == pytest.approx(stats.ttest_1samp(b - a, d0, alternative="greater").pvalue, rel=1e-9)
        assert (t.at(0.95).low > d0) == (t.p_above(d0) < 0.025)


def test_paired_t_edge_cases():
    x = list(np.random.default_rng(12).uniform(0, 1, 30))
    same = S.paired_mean_test(x, x)
    assert (same.diff, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert same.p_above(-0.03) == 0.0 and same.p_above(0.0) == 1.0  # known exactly: 0 > -0.03, not > 0
    up = S.paired_mean_test([v + 0.1 for v in x], x)  # every difference 0.1: known exactly
    assert up.diff == pytest.approx(0.1) and up.p_value == 0.0
    one = S.paired_mean_test([0.5], [0.2])
    assert one.diff == pytest.approx(0.3) and math.isnan(one.low) and math.isnan(one.p_value)
    assert math.isnan(S.paired_mean_test([], []).diff)
    with pytest.raises(ValueError):
        S.paired_mean_test([1.0], [1.0, 2.0])


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(5)
    for _ in range(50):
        p = list(rng.uniform(0, 0.2, int(rng.integers(1, 12))))
        assert S.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-12)
    assert S.holm([]) == []
    out = S.holm([0.01, math.nan, 0.04])  # NaN is not a member of the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


# ----------------------------------------------------------------------------------- bootstrap
def test_bootstrap_mean_interval_agrees_with_scipy_percentile_bootstrap():
    x = np.random.default_rng(3).beta(2, 3, size=60)
    low, high = S.bootstrap_interval(x, n_resamples=20_000, seed=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=20_000, method="percentile", rng=np.random.default_rng(2))
    # two Monte Carlo estimates of the same quantiles: they agree to Monte Carlo error
    assert low == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert high == pytest.approx(ref.confidence_interval.high, abs=0.004)
    e = S.mean_estimate(x, n_resamples=20_000, seed=1)
    assert e.value == pytest.approx(x.mean()) and (e.low, e.high) == (low, high) and e.n == 60


def test_bootstrap_is_seeded_and_edge_cases_are_explicit():
    x = list(np.random.default_rng(12).uniform(0, 1, 30))
    assert S.bootstrap_interval(x, seed=3) == S.bootstrap_interval(x, seed=3)
    assert S.bootstrap_interval(x, seed=3) != S.bootstrap_interval(x, seed=4)
    e = S.mean_estimate([])
    assert e.n == 0 and math.isnan(e.value) and math.isnan(e.low) and e.format() == "n/a"
    e = S.mean_estimate([0.7])
    assert e.value == 0.7 and math.isnan(e.low) and e.format() == "0.70 [n/a]"  # no interval from one value
    with pytest.raises(ValueError):
        S.mean_estimate([0.1, float("nan")])


def test_formatting():
    t = S.PairedTest(0.07, 0.01, 0.13, 0.03, 300, "mcnemar-score", "tango-score", 30, 9)
    assert t.format() == "+0.07 [+0.01, +0.13] (p=0.030)" and t.significant
    assert S.format_p(0.004) == "p<0.01" and S.format_p(0.0004) == "p<0.001" and S.format_p(0.31) == "p=0.31"


