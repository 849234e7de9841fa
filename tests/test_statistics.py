"""reset.evaluation.statistics against reference implementations (scipy, statsmodels), a published
worked example, hand-checked edge cases and simulation (coverage, type I error, power)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.power import TTestPower
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


# ------------------------------------------------------------------------------------ McNemar
@pytest.mark.parametrize("b,c", [(0, 1), (1, 0), (5, 2), (2, 5), (6, 16), (20, 0), (13, 13), (40, 25), (3, 30)])
def test_exact_mcnemar_matches_scipy_binomtest_and_statsmodels(b, c):
    first = [True] * b + [False] * c + [True] * 7 + [False] * 11
    second = [False] * b + [True] * c + [True] * 7 + [False] * 11
    r = S.mcnemar_exact(first, second)
    assert (r.first_only, r.second_only, r.n) == (b, c, len(first))
    assert r.p_value == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    table = [[7, b], [c, 11]]
    assert r.p_value == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-12)


def test_mcnemar_edge_cases():
    assert S.mcnemar_exact([True, False], [True, False]).p_value == 1.0  # no discordant pair
    assert S.mcnemar_exact([], []).p_value == 1.0
    assert S.mcnemar_exact_counts(0, 8).p_value == pytest.approx(2 / 2**8)  # all 8 flips one way: 2 * (1/2)^8
    with pytest.raises(ValueError):
        S.mcnemar_exact([True], [True, False])


# ---------------------------------------------------------------------- Newcombe paired interval
def test_newcombe_paired_interval_matches_the_published_example():
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8: complete
    # response before / after consolidation therapy (Cavo et al. 2012), table [[59, 6], [16, 80]]:
    # Newcombe square-and-add estimate -0.0621, 95% CI -0.1186 to -0.0046.
    low, high = S.newcombe_paired_interval(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    first = [True] * 65 + [False] * 96
    second = [True] * 59 + [False] * 6 + [True] * 16 + [False] * 80
    t = S.paired_rate_test(first, second)
    assert round(t.diff, 4) == -0.0621 and (t.wins, t.losses, t.n) == (6, 16, 161)
    assert t.p_value == pytest.approx(stats.binomtest(6, 22).pvalue)


def test_newcombe_interval_is_antisymmetric_and_bounded():
    for table in [(10, 0, 0, 10), (0, 20, 0, 0), (5, 3, 9, 40), (0, 0, 0, 7)]:
        low, high = S.newcombe_paired_interval(*table)
        a, b, c, d = table
        low2, high2 = S.newcombe_paired_interval(a, c, b, d)  # swap the two models
        assert (low2, high2) == pytest.approx((-high, -low))
        assert -1.0 <= low <= (b - c) / sum(table) <= high <= 1.0
    assert all(math.isnan(x) for x in S.newcombe_paired_interval(0, 0, 0, 0))


def test_newcombe_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    probs = np.array([0.35, 0.12, 0.05, 0.48])  # both, first only, second only, neither
    true = probs[1] - probs[2]
    hits = 0
    reps = 2000
    for table in rng.multinomial(100, probs, size=reps):
        low, high = S.newcombe_paired_interval(*map(int, table))
        hits += low <= true <= high
    assert 0.93 <= hits / reps <= 0.975


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


def test_paired_bootstrap_agrees_with_scipy_and_with_the_paired_t_test():
    rng = np.random.default_rng(4)
    a = rng.uniform(0, 1, 150)
    b = np.clip(a + rng.normal(0.04, 0.2, 150), 0, 1)
    t = S.paired_bootstrap(b, a, n_resamples=20_000, seed=5)
    ref = stats.bootstrap((b, a), lambda u, v, axis=-1: np.mean(u - v, axis=axis), paired=True,
                          n_resamples=20_000, method="percentile", rng=np.random.default_rng(6))
    assert t.diff == pytest.approx(np.mean(b - a))
    assert t.low == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert t.high == pytest.approx(ref.confidence_interval.high, abs=0.004)
    # the bootstrap p-value is close to the paired t-test's on data this regular
    assert t.p_value == pytest.approx(stats.ttest_rel(b, a).pvalue, abs=0.01)
    assert t.wins == int((b > a).sum()) and t.losses == int((b < a).sum())


def test_paired_bootstrap_p_value_and_interval_agree():
    rng = np.random.default_rng(8)
    for shift in (0.0, 0.02, 0.05, 0.08, 0.15):
        a = rng.uniform(0, 1, 80)
        b = a + rng.normal(shift, 0.25, 80)
        t = S.paired_bootstrap(b, a, n_resamples=4_000, seed=9)
        excludes_zero = t.low > 0 or t.high < 0
        assert excludes_zero == (t.p_value < 0.05) or abs(t.p_value - 0.05) < 0.005


def test_paired_bootstrap_rejects_a_true_null_about_5_percent_of_the_time():
    rng = np.random.default_rng(10)
    rejections = sum(S.paired_bootstrap(rng.normal(0, 1, 60), np.zeros(60), n_resamples=1_000, seed=i).p_value < 0.05
                     for i in range(400))
    assert 0.02 <= rejections / 400 <= 0.09


def test_bootstrap_is_seeded_and_edge_cases_are_explicit():
    x = list(np.random.default_rng(12).uniform(0, 1, 30))
    assert S.bootstrap_interval(x, seed=3) == S.bootstrap_interval(x, seed=3)
    assert S.bootstrap_interval(x, seed=3) != S.bootstrap_interval(x, seed=4)
    same = S.paired_bootstrap(x, x)
    assert (same.diff, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    up = S.paired_bootstrap([v + 0.1 for v in x], x, n_resamples=1_000)
    assert up.diff == pytest.approx(0.1) and up.p_value == pytest.approx(2 / 1001)
    e = S.mean_estimate([])
    assert e.n == 0 and math.isnan(e.value) and math.isnan(e.low) and e.format() == "n/a"
    e = S.mean_estimate([0.7])
    assert e.value == 0.7 and math.isnan(e.low) and e.format() == "0.70 [n/a]"  # no interval from one value
    assert math.isnan(S.paired_bootstrap([], []).diff)
    with pytest.raises(ValueError):
        S.paired_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        S.mean_estimate([0.1, float("nan")])


def test_formatting():
    t = S.PairedTest(0.07, 0.01, 0.13, 0.03, 300, "mcnemar-exact", "newcombe", 30, 9)
    assert t.format() == "+0.07 [+0.01, +0.13] (p=0.030)" and t.significant
    assert S.format_p(0.004) == "p<0.01" and S.format_p(0.0004) == "p<0.001" and S.format_p(0.31) == "p=0.31"


# --------------------------------------------------------------------------------- sample size
def test_paired_proportions_sample_size_reproduces_the_guide():
    # The guide in issue 9 / docs: ~300 paired prompts for +0.06 (the prototype's discordance, 7 of 50
    # prompts: psi 0.14), ~155 for +0.10 (psi 0.20), at alpha 0.05 two-sided and 80% power.
    assert abs(S.sample_size_paired_proportions(0.06, 0.14) - 300) <= 5
    assert abs(S.sample_size_paired_proportions(0.10, 0.20) - 155) <= 3
    # more discordance (noisier models) needs more prompts; a bigger gain fewer
    assert S.sample_size_paired_proportions(0.06, 0.20) > S.sample_size_paired_proportions(0.06, 0.14)
    assert S.sample_size_paired_proportions(0.10, 0.14) < S.sample_size_paired_proportions(0.06, 0.14)
    with pytest.raises(ValueError):
        S.sample_size_paired_proportions(0.3, 0.2)  # delta cannot exceed the discordant share


def test_exact_mcnemar_power_matches_simulation_and_the_sample_size():
    delta, psi = 0.10, 0.20
    n = S.sample_size_paired_proportions(delta, psi)
    exact = S.power_paired_proportions(n, delta, psi)
    # Connor's n is for the normal-approximation test; the exact test is a little conservative
    assert 0.72 <= exact <= 0.82
    assert S.power_paired_proportions(2 * n, delta, psi) > 0.95 > exact
    n_exact = S.sample_size_paired_proportions(delta, psi, exact=True)
    assert n_exact > n and S.power_paired_proportions(n_exact, delta, psi) >= 0.8
    assert S.power_paired_proportions(n_exact - 1, delta, psi) < 0.8
    rng = np.random.default_rng(11)
    p10, p01 = (psi + delta) / 2, (psi - delta) / 2
    reps = 2000
    tables = rng.multinomial(n, [p10, p01, 1 - psi], size=reps)
    rejected = sum(stats.binomtest(int(b), int(b + c)).pvalue <= 0.05 for b, c, _ in tables if b + c > 0)
    assert rejected / reps == pytest.approx(exact, abs=3 * math.sqrt(exact * (1 - exact) / reps))


def test_paired_means_sample_size_matches_statsmodels_t_test_power():
    solver = TTestPower()
    for delta, sd in [(0.10, 0.27), (0.05, 0.2), (0.15, 0.3), (0.2, 0.5), (0.3, 0.3)]:
        ref = math.ceil(solver.solve_power(effect_size=delta / sd, alpha=0.05, power=0.8, alternative="two-sided"))
        assert abs(S.sample_size_paired_means(delta, sd) - ref) <= 1
    for n in (20, 30, 60, 150):
        ref = solver.power(effect_size=0.1 / 0.27, nobs=n, alpha=0.05, alternative="two-sided")
        assert S.power_paired_means(n, 0.1, 0.27) == pytest.approx(ref, abs=0.01)
    # the guide: ~60 grounded items detect +0.10 in answer F1 when the paired differences' SD is ~0.27
    assert abs(S.sample_size_paired_means(0.10, 0.27) - 60) <= 2
