"""Sample sizes, power and the gate's error rates, for the tests the evaluation uses (McNemar's
score test with Tango's bound for pass / fail, the paired t for scores).

  sample_size_paired_proportions(delta, discordant)     Connor (1987): paired units for the
                                                         two-sided McNemar test to see `delta`.
  power_paired_proportions(n, delta, discordant,         power of the one-sided score test of
                           margin=0, alpha=0.05)         "difference > -margin" at alpha / 2 (margin 0:
                                                         superiority), computed exactly over the
                                                         multinomial of the discordant counts.
  sample_size_paired_means(delta, sd_diff)               paired t, normal approximation plus
  power_paired_means(n, delta, sd_diff, margin=0)        Guenther's correction.
  simulate_gate(rule, n_if, n_faith, ...)                the gate (reset.evaluation.gate) applied to
                                                         simulated paired data: its promotion rate.

`discordant` (psi) is the share of units on which the two models' pass / fail verdicts differ:
what decides a paired test's power, not the pass rate. `sd_diff` is the standard deviation of
the paired score differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reset.evaluation.gate import GateRule, decide
from reset.evaluation.metrics import PRIMARY
from reset.evaluation.statistics import PairedTest, paired_rate_test_counts, t_cdf, tango_z, z_value


def _check_paired_props(delta: float, discordant: float) -> None:
    if not 0.0 < discordant <= 1.0:
        raise ValueError(f"discordant (the share of units whose verdict differs) must be in (0, 1], got {discordant}")
    if not abs(delta) <= discordant:
        raise ValueError(f"need |delta| <= discordant, got delta {delta}, discordant {discordant}")


def sample_size_paired_proportions(delta: float, discordant: float, *, alpha: float = 0.05,
                                   power: float = 0.8) -> int:
    """Paired units for McNemar's two-sided test at `alpha` to detect a rate difference `delta`
    with `power` (Connor 1987):

        n = (z_{1-a/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2,  psi = discordant."""
    _check_paired_props(delta, discordant)
    if delta == 0:
        raise ValueError("delta must be != 0")
    za, zb = z_value(1.0 - alpha), z_value(2.0 * power - 1.0)
    return math.ceil((za * math.sqrt(discordant) + zb * math.sqrt(discordant - delta * delta)) ** 2
                     / (delta * delta) - 1e-9)


def _log_binom_pmf(m: int, q: float) -> np.ndarray:
    k = np.arange(m + 1)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log((m - k[1:] + 1) / k[1:]))])
    return log_comb + k * math.log(q) + (m - k) * math.log1p(-q)


def power_paired_proportions(n: int, delta: float, discordant: float, *, margin: float = 0.0,
                             alpha: float = 0.05) -> float:
    """P(the one-sided score test rejects "difference <= -margin" at level alpha / 2), i.e. P(the
    lower end of the two-sided 1 - alpha Tango interval is above -margin), when a share
    `discordant` of n units differ and the true difference is `delta`. Exact: the discordant count
    m is Binomial(n, psi) and the first model's wins given m are Binomial(m, (psi + delta) / 2 psi)."""
    _check_paired_props(delta, discordant)
    if n < 1:
        raise ValueError("n must be >= 1")
    zc = z_value(1.0 - alpha)
    q = (discordant + delta) / (2.0 * discordant)
    m_probs = np.zeros(n + 1) if discordant >= 1.0 else np.exp(_log_binom_pmf(n, discordant))
    if discordant >= 1.0:
        m_probs[n] = 1.0
    total = 0.0
    for m in range(n + 1):
        if m_probs[m] < 1e-14:
            continue
        if q <= 0.0 or q >= 1.0:
            wins = np.zeros(m + 1)
            wins[m if q >= 1.0 else 0] = 1.0
        else:
            wins = np.exp(_log_binom_pmf(m, q)) if m else np.ones(1)
        reject = sum(w for b, w in enumerate(wins) if w > 1e-16 and tango_z(b, m - b, n, -margin) > zc)
        total += m_probs[m] * reject
    return min(1.0, total)


def sample_size_paired_means(delta: float, sd_diff: float, *, alpha: float = 0.05, power: float = 0.8,
                             margin: float = 0.0) -> int:
    """Paired units for the paired t to show "difference > -margin" one-sided at alpha / 2 (margin 0:
    the two-sided test at alpha) when the true difference is `delta`:

        n = ((z_{1-a/2} + z_{power}) sd / (delta + margin))^2 + z_{1-a/2}^2 / 2

    (the normal approximation plus Guenther's (1981) correction for the t distribution)."""
    if sd_diff <= 0 or delta + margin == 0:
        raise ValueError(f"need sd_diff > 0 and delta + margin != 0, got {sd_diff}, {delta}, {margin}")
    za, zb = z_value(1.0 - alpha), z_value(2.0 * power - 1.0)
    n = ((za + zb) * sd_diff / abs(delta + margin)) ** 2 + za * za / 2
    return math.ceil(n - 1e-9)


def power_paired_means(n: int, delta: float, sd_diff: float, *, alpha: float = 0.05, margin: float = 0.0,
                       two_sided: bool | None = None) -> float:
    """Power of the paired t: one-sided "difference > -margin" at alpha / 2; with margin 0 and
    two_sided (the default then) the two-sided test at alpha. Normal approximation with Guenther's
    correction (within 0.01 of the noncentral t from n = 20 on)."""
    if n < 2 or sd_diff <= 0:
        raise ValueError("need n >= 2 and sd_diff > 0")
    za = z_value(1.0 - alpha)
    shift = (delta + margin) * math.sqrt(max(n - za * za / 2, 0.0)) / sd_diff
    from statistics import NormalDist

    nd = NormalDist()
    if two_sided if two_sided is not None else margin == 0:
        return nd.cdf(shift - za) + nd.cdf(-shift - za)
    return nd.cdf(shift - za)


# -------------------------------------------------------------------------------- simulation
@dataclass(frozen=True)
class Scenario:
    """A true state of the world for simulate_gate: the candidate's true paired differences."""

    if_delta: float = 0.0       # true IF pass-rate difference
    if_discordance: float = 0.14  # share of IF prompts on which the two models' verdicts differ
    faith_delta: float = 0.0    # true mean faithfulness difference
    faith_sd: float = 0.23      # SD of the paired faithfulness differences
    faith_zero: float = 0.0     # share of grounded items whose answers (and scores) are the same
    identical: bool = False     # the candidate answers exactly as the reference does


def _faith_test(rng: np.random.Generator, n: int, s: Scenario) -> PairedTest:
    from reset.evaluation.statistics import paired_mean_test

    if s.identical:
        d = np.zeros(n)
    else:
        moving = rng.random(n) >= s.faith_zero
        k = int(moving.sum())
        share = max(1.0 - s.faith_zero, 1e-9)
        # the moving items carry the whole mean and the SD of the paired differences
        mu = s.faith_delta / share
        sd = math.sqrt(max(s.faith_sd ** 2 / share - s.faith_zero * mu * mu, 1e-12))
        d = np.zeros(n)
        d[moving] = rng.normal(mu, sd, k)
    return paired_mean_test(d, np.zeros(n))


def simulate_gate(rule: GateRule, n_if: int, n_faith: int, scenario: Scenario, *, reps: int = 2000,
                  seed: int = 0, uses: int = 1) -> float:
    """The share of `reps` simulated evaluations the gate passes. `uses` > 1: each repetition runs
    that many promotions against the same frozen test split, each with a fresh challenger of the
    scenario (use k at alpha_k), and counts one when ANY of them passes."""
    rng = np.random.default_rng(seed)
    p10 = (scenario.if_discordance + scenario.if_delta) / 2.0
    p01 = (scenario.if_discordance - scenario.if_delta) / 2.0
    if min(p10, p01) < 0:
        raise ValueError("if_delta cannot exceed if_discordance")
    passed = 0
    for _ in range(reps):
        any_pass = False
        for k in range(1, uses + 1):
            if scenario.identical:
                b = c = 0
            else:
                b, c, _ = rng.multinomial(n_if, [p10, p01, 1.0 - p10 - p01])
            tests = {PRIMARY[0]: paired_rate_test_counts(int(b), int(c), n_if),
                     PRIMARY[1]: _faith_test(rng, n_faith, scenario)}
            this = GateRule(rule.margins, rule.alpha, rule.superiority, rule.spending, k if uses > 1 else rule.use,
                            rule.axes)
            ident = (n_if + n_faith, n_if + n_faith) if scenario.identical else None
            if decide(tests, this, identical=ident).passed:
                any_pass = True
                break
        passed += any_pass
    return passed / reps


def error_table(rule: GateRule, n_if: int, n_faith: int, scenarios: Sequence[tuple[str, Scenario]], *,
                reps: int = 2000, seed: int = 0) -> list[tuple[str, float, float]]:
    """(name, promotion rate, its Monte Carlo standard error) per scenario."""
    out = []
    for i, (name, s) in enumerate(scenarios):
        r = simulate_gate(rule, n_if, n_faith, s, reps=reps, seed=seed + i)
        out.append((name, r, math.sqrt(r * (1 - r) / reps)))
    return out


SCENARIOS: list[tuple[str, Scenario]] = [
    ("exactly as good as MTL (14% of IF verdicts differ)", Scenario()),
    ("exactly as good, 60% of grounded answers unchanged", Scenario(faith_zero=0.6)),
    ("identical answers", Scenario(identical=True)),
    ("worse by the margin on IF (-0.03), equal faithfulness", Scenario(if_delta=-0.03)),
    ("better IF (+0.05), worse faithfulness by the margin (-0.03)", Scenario(if_delta=0.05, faith_delta=-0.03)),
    ("better on IF only (+0.05)", Scenario(if_delta=0.05)),
    ("better on faithfulness only (+0.03)", Scenario(faith_delta=0.03)),
    ("the effects the experiment observed (IF +0.05, faithfulness +0.03)", Scenario(if_delta=0.05, faith_delta=0.03)),
    ("twice those effects (IF +0.10, faithfulness +0.06)", Scenario(if_delta=0.10, if_discordance=0.2,
                                                                     faith_delta=0.06)),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the default gate's promotion rates by simulation (the table in docs/design.md):

        python -m reset.evaluation.power [--n-if 450] [--n-faith 200] [--reps 4000]"""
    import argparse

    from reset.config import RegisterConfig
    from reset.evaluation.decision import rules_from_config

    ap = argparse.ArgumentParser(prog="python -m reset.evaluation.power", description=main.__doc__)
    ap.add_argument("--n-if", type=int, default=450, help="test prompts that count for IF (default: the demo's)")
    ap.add_argument("--n-faith", type=int, default=200, help="test items that count for faithfulness")
    ap.add_argument("--reps", type=int, default=4000)
    ap.add_argument("--uses", type=int, default=10, help="promotions against one test split, for the last rows")
    args = ap.parse_args(argv)
    rule = rules_from_config(RegisterConfig())["reference"]
    print(f"gate: {rule.describe()}; {args.n_if} IF prompts, {args.n_faith} grounded items; "
          f"faithfulness SD of paired differences 0.23; {args.reps} simulated evaluations per row\n")
    print("| true state of the candidate | promoted | 95% MC interval |\n|---|---:|---:|")
    for name, r, se in error_table(rule, args.n_if, args.n_faith, SCENARIOS, reps=args.reps):
        print(f"| {name} | {r:.3f} | [{max(0.0, r - 1.96 * se):.3f}, {min(1.0, r + 1.96 * se):.3f}] |")
    reps = max(200, args.reps // 5)
    for label, this in (("with alpha spending (default)", rule),
                        ("without spending", GateRule(rule.margins, rule.alpha, rule.superiority, False))):
        r = simulate_gate(this, args.n_if, args.n_faith, Scenario(), reps=reps, uses=args.uses, seed=99)
        se = math.sqrt(r * (1 - r) / reps)
        print(f"| exactly as good, {args.uses} promotions against one test split, {label} | {r:.3f} | "
              f"[{max(0.0, r - 1.96 * se):.3f}, {min(1.0, r + 1.96 * se):.3f}] |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Scenario", "error_table", "power_paired_means", "power_paired_proportions", "sample_size_paired_means",
           "sample_size_paired_proportions", "simulate_gate", "t_cdf"]
