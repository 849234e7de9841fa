"""Sample sizes and power (against statsmodels and simulation), and the promotion gate's error
rates computed by simulation at the default sizes: a model exactly as good as MTL is promoted at
most alpha / 2 of the time, an identical one never, one worse by the margin at most alpha / 2,
and repeated promotions against one frozen test split stay within alpha / 2 when alpha is spent
over the uses (and do not without it)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from reset.config import RegisterConfig
from reset.evaluation import power as P
from reset.evaluation import statistics as S
from reset.evaluation.decision import rules_from_config
from reset.evaluation.gate import GateRule, spent_alpha

# the default test split of configs/demo.yaml: 400 IF prompts + 200 grounded items; about a quarter
# of the grounded items carry a constraint, so ~450 prompts count for IF and 200 for faithfulness
N_IF, N_FAITH = 450, 200
REPS = 2000


def _mc(rate: float, reps: int = REPS) -> float:
    """Three Monte Carlo standard errors (at least one count's worth)."""
    return max(3 * math.sqrt(max(rate * (1 - rate), 1e-9) / reps), 1 / reps)


# ------------------------------------------------------------------------------- sample sizes
def test_paired_proportions_sample_size_reproduces_the_guide():
    # ~300 paired prompts for +0.06 at the prototype's discordance (psi 0.14), ~155 for +0.10 (psi 0.20)
    assert abs(P.sample_size_paired_proportions(0.06, 0.14) - 300) <= 5
    assert abs(P.sample_size_paired_proportions(0.10, 0.20) - 155) <= 3
    assert P.sample_size_paired_proportions(0.06, 0.20) > P.sample_size_paired_proportions(0.06, 0.14)
    with pytest.raises(ValueError):
        P.sample_size_paired_proportions(0.3, 0.2)  # delta cannot exceed the discordant share


@pytest.mark.parametrize("delta,psi,margin", [(0.10, 0.20, 0.0), (0.05, 0.14, 0.0), (0.0, 0.14, 0.03),
                                              (0.03, 0.10, 0.02)])
def test_score_test_power_is_exact_against_simulation(delta, psi, margin):
    n = 300
    exact = P.power_paired_proportions(n, delta, psi, margin=margin)
    rng = np.random.default_rng(11)
    tables = rng.multinomial(n, [(psi + delta) / 2, (psi - delta) / 2, 1 - psi], size=REPS)
    sim = np.mean([S.paired_rate_test_counts(int(b), int(c), n).p_above(-margin) < 0.025 for b, c, _ in tables])
    assert sim == pytest.approx(exact, abs=_mc(exact))


def test_connor_sample_size_gives_its_power_to_the_score_test():
    n = P.sample_size_paired_proportions(0.10, 0.20)
    # Connor's n is an approximation for this (asymptotic) test: its exact power is within a few points
    assert 0.78 <= P.power_paired_proportions(n, 0.10, 0.20) <= 0.85
    assert P.power_paired_proportions(n - 40, 0.10, 0.20) < 0.78 < P.power_paired_proportions(n + 40, 0.10, 0.20)


def test_paired_means_power_matches_statsmodels():
    solver = TTestPower()
    for delta, sd in [(0.10, 0.27), (0.05, 0.2), (0.15, 0.3), (0.3, 0.3)]:
        ref = math.ceil(solver.solve_power(effect_size=delta / sd, alpha=0.05, power=0.8, alternative="two-sided"))
        assert abs(P.sample_size_paired_means(delta, sd) - ref) <= 1
    for n in (20, 60, 150):
        ref = solver.power(effect_size=0.1 / 0.27, nobs=n, alpha=0.05, alternative="two-sided")
        assert P.power_paired_means(n, 0.1, 0.27) == pytest.approx(ref, abs=0.01)
        # non-inferiority: one-sided at alpha / 2 against -margin
        ref = solver.power(effect_size=(0.0 + 0.03) / 0.23, nobs=n, alpha=0.025, alternative="larger")
        assert P.power_paired_means(n, 0.0, 0.23, margin=0.03) == pytest.approx(ref, abs=0.01)


# ------------------------------------------------------------------------- the gate's errors
DEFAULT = rules_from_config(RegisterConfig())["reference"]


def test_the_default_rule_is_the_documented_one():
    assert GateRule(margins={"if_prompt_acc": 0.03, "faithfulness": 0.03}, alpha=0.05, superiority=True,
                               spending=True, use=1) == DEFAULT
    assert spent_alpha(0.05, 1) == pytest.approx(0.05 * 6 / math.pi ** 2)
    assert sum(spent_alpha(0.05, k) for k in range(1, 100_000)) == pytest.approx(0.05, rel=1e-4)


@pytest.mark.parametrize("name,scenario,most", [
    ("a model exactly as good as MTL", P.Scenario(), 0.025),
    ("as good, with many identical answers", P.Scenario(faith_zero=0.6), 0.025),
    ("worse by the margin on IF, equal faithfulness", P.Scenario(if_delta=-0.03), 0.025),
    ("worse by the margin on faithfulness, better IF", P.Scenario(if_delta=0.05, faith_delta=-0.03), 0.025),
])
def test_the_gate_promotes_a_no_better_model_at_most_alpha_over_2(name, scenario, most):
    rate = P.simulate_gate(DEFAULT, N_IF, N_FAITH, scenario, reps=REPS, seed=1)
    assert rate <= most + _mc(most), (name, rate)


def test_the_gate_never_promotes_an_identical_model():
    assert P.simulate_gate(DEFAULT, N_IF, N_FAITH, P.Scenario(identical=True), reps=200) == 0.0
    # even with the most permissive settings (no superiority, a wide margin)
    loose = GateRule(margins={"if_prompt_acc": 0.2, "faithfulness": 0.2}, superiority=False)
    assert P.simulate_gate(loose, N_IF, N_FAITH, P.Scenario(identical=True), reps=200) == 0.0


def test_the_gate_has_power_for_the_effects_the_experiment_observed():
    # README's experiment: ReSet vs MTL IF +0.05 (14% discordant), faithfulness +0.03 (SD 0.23)
    rate = P.simulate_gate(DEFAULT, N_IF, N_FAITH, P.Scenario(if_delta=0.05, faith_delta=0.03), reps=REPS, seed=2)
    assert 0.65 <= rate <= 0.85  # docs/design.md quotes this figure (0.74 at these sizes)


def test_repeated_promotions_against_one_test_split_stay_within_alpha_only_with_spending():
    equal = P.Scenario()
    spent = P.simulate_gate(DEFAULT, N_IF, N_FAITH, equal, reps=600, uses=10, seed=3)
    assert spent <= 0.025 + _mc(0.025, 600)
    # the same rule without spending, and without the superiority requirement that protects it:
    # ten tries let a no-better model through far more often
    naive = GateRule(superiority=False, spending=False)
    assert P.simulate_gate(naive, N_IF, N_FAITH, equal, reps=300, uses=10, seed=3) > 0.5


def test_the_old_rule_is_what_the_issue_measured():
    # the rule this gate replaced (point estimates, tolerance 0) is a non-inferiority test at margin
    # 0 with a 50% bound: a model exactly as good passes about a quarter of the time (both axes >= 0)
    old = GateRule(margins={"if_prompt_acc": 1e-6, "faithfulness": 1e-6}, alpha=0.999999, superiority=False,
                   spending=False)
    rate = P.simulate_gate(old, 225, 100, P.Scenario(), reps=REPS, seed=4)
    assert rate == pytest.approx(0.25, abs=0.05)
    assert stats.binomtest(int(rate * REPS), REPS, 0.025).pvalue < 1e-6  # far above the new gate's bound
