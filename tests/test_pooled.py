"""Seeds pooled (reset.evaluation.pooled, reset.experiments.report): the crossed seed x prompt
analysis against statsmodels' linear mixed model, the stratified McNemar against statsmodels'
Mantel-Haenszel test, coverage by simulation (and why a per-run test is not enough), and the
experiment report built from evaluate payloads."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.stats.contingency_tables import StratifiedTable

from reset.evaluation import statistics as S
from reset.evaluation.pooled import pooled_paired, stratified_mcnemar


def _crossed(rng, seeds=5, units=120, mu=0.03, seed_sd=0.03, unit_sd=0.15, noise=0.2):
    return (mu + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, unit_sd, (1, units))
            + rng.normal(0, noise, (seeds, units)))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pooled_matches_statsmodels_mixedlm_with_crossed_effects(seed):
    d = _crossed(np.random.default_rng(seed))
    p = pooled_paired(d)
    s, u = d.shape
    df = pd.DataFrame({"d": d.ravel(), "seed": np.repeat(np.arange(s), u), "unit": np.tile(np.arange(u), s),
                       "g": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.MixedLM.from_formula("d ~ 1", groups="g", vc_formula={"seed": "0 + C(seed)", "unit": "0 + C(unit)"},
                                      data=df).fit(reml=True)
    assert p.diff == pytest.approx(fit.params["Intercept"], abs=1e-9)
    assert p.se == pytest.approx(fit.bse["Intercept"], rel=2e-3)
    comps = dict(zip(fit.model.exog_vc.names, fit.vcomp, strict=True))
    assert p.components["seed"] == pytest.approx(comps["seed"], rel=2e-2, abs=1e-6)
    assert p.components["unit"] == pytest.approx(comps["unit"], rel=2e-2)
    assert p.components["noise"] == pytest.approx(fit.scale, rel=2e-3)
    assert (p.low > 0 or p.high < 0) == (p.p_value < 0.05)  # one statistic: they agree
    assert p.per_seed == pytest.approx(list(d.mean(axis=1))) and p.seed_sd == pytest.approx(d.mean(axis=1).std(ddof=1))


def test_one_seed_is_the_paired_t():
    d = _crossed(np.random.default_rng(4), seeds=1)
    p = pooled_paired(d)
    t = S.paired_mean_test(d[0], np.zeros(d.shape[1]))
    assert (p.diff, p.low, p.high, p.p_value) == pytest.approx((t.diff, t.low, t.high, t.p_value))
    assert "one seed" in p.method and math.isnan(p.seed_sd)


def test_pooled_interval_covers_when_seeds_vary_and_a_naive_pooled_t_does_not():
    # 5 seeds whose trained models differ (seed SD 0.04): the crossed analysis keeps its 95%; treating
    # the 5 x 120 differences as independent (what one run's p does, pooled) covers far less often
    rng = np.random.default_rng(9)
    crossed = naive = 0
    reps = 400
    for _ in range(reps):
        d = _crossed(rng, seed_sd=0.04, mu=0.0)
        p = pooled_paired(d)
        crossed += p.low <= 0.0 <= p.high
        t = S.paired_mean_test(d.ravel(), np.zeros(d.size))
        naive += t.low <= 0.0 <= t.high
    assert crossed / reps >= 0.92
    assert naive / reps < 0.8


def test_stratified_mcnemar_is_mantel_haenszel_over_pairs():
    rng = np.random.default_rng(6)
    tables = []
    flags = []
    for _ in range(4):  # four seeds, 80 prompts each
        first = rng.random(80) < 0.55
        second = rng.random(80) < 0.5
        flags.append((first, second))
        tables.append((int((first & ~second).sum()), int((second & ~first).sum()), 80))
    t = stratified_mcnemar(tables)
    # statsmodels' CMH with every pair a stratum (treatment x outcome, one subject per row)
    strata = np.array(
        [[[int(a), 1 - int(a)], [int(b), 1 - int(b)]] for f, s in flags for a, b in zip(f, s, strict=True)], dtype=float
    ).transpose(1, 2, 0)
    ref = StratifiedTable(strata).test_null_odds(correction=False)
    assert t.statistic**2 == pytest.approx(ref.statistic, rel=1e-9)
    assert t.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    b, c, n = (sum(x[i] for x in tables) for i in range(3))
    assert (t.diff, t.n) == (pytest.approx((b - c) / n), n)


def _payload(seed: int, rng, arms=("base", "mtl", "reset", "control"), n_if=300, n_f=80, gain=0.0):
    """A minimal evaluate payload: summary (arms, reference, metric kinds, estimates) and units."""
    units = {}
    base_if = rng.random(n_if) < 0.5
    base_f = rng.uniform(0, 1, n_f)
    for a in arms:
        bump = gain if a == "reset" else 0.0
        flip = rng.random(n_if) < 0.02
        units[a] = {
            "if_prompt_acc": {f"i{u}": bool(v) for u, v in enumerate(np.where(flip, ~base_if, base_if))},
            "faithfulness": {
                f"f{u}": float(np.clip(v + bump + rng.normal(0, 0.1), 0, 1)) for u, v in enumerate(base_f)
            },
        }
    est = {
        a: {
            k: {"value": float(np.mean(list(units[a][k].values()))), "low": 0.0, "high": 1.0}
            for k in ("if_prompt_acc", "faithfulness")
        }
        for a in arms
    }
    return {
        "seed": seed,
        "units": units,
        "verdicts": [],
        "summary": {
            "arms": list(arms),
            "reference": "mtl",
            "estimates": est,
            "metrics": [{"key": "if_prompt_acc", "kind": "rate"}, {"key": "faithfulness", "kind": "mean"}],
        },
    }


def test_experiment_report_pools_seeds_tests_the_primary_hypothesis_and_holm_adjusts_the_rest():
    from reset.experiments.report import seed_report

    rng = np.random.default_rng(0)
    payloads = {s: _payload(s, rng, gain=0.15) for s in range(5)}
    md, data = seed_report(payloads)
    assert data["seeds"] == [0, 1, 2, 3, 4]
    # the primary hypothesis: ReSet vs MTL pooled, judged by the gate's rule
    prim = data["primary"]
    assert "faithfulness" in prim["reason"] and prim["passed"] is True and "superior on faithfulness" in prim["reason"]
    assert set(data["pooled"]) == {"base", "reset", "control", "reset vs control"}
    # every other comparison is in the Holm family, with adjusted p >= raw p
    fam = {(r["comparison"], r["axis"]) for r in data["family"]}
    assert ("reset", "if_prompt_acc") not in fam and ("reset vs control", "faithfulness") in fam
    assert all(r["p_holm"] >= r["p"] for r in data["family"])
    assert "Primary hypothesis" in md and "Holm" in md and "per seed" in md
    assert len(data["pooled"]["reset"]["faithfulness"]["per_seed"]) == 5
    # no gain: the primary hypothesis does not pass (and says why)
    md, data = seed_report({s: _payload(s, rng, gain=0.0) for s in range(5)})
    assert data["primary"]["passed"] is False
