"""Error rates of the statistical core, measured on seeded simulations.

Each rate is checked against a binomial confidence bound: "at most alpha" means the observed rate
is below the upper end of a 99.9% Clopper–Pearson interval around alpha for that many runs, so a
correct procedure fails by chance about once in a thousand suites, a wrong one (the old rules,
measured beside them) fails every time.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import optimize, stats

from driftloop.core import sequential as seq, stats as st

ALPHA = 0.05


def upper(rate: float, runs: int, confidence: float = 0.999) -> float:
    """The largest observed share still consistent with a true rate ``rate`` over ``runs`` runs."""
    return float(stats.binom.ppf(confidence, runs, rate)) / runs


def lower(rate: float, runs: int, confidence: float = 0.999) -> float:
    return float(stats.binom.ppf(1 - confidence, runs, rate)) / runs


# -- 1. calibrated p-values ------------------------------------------------------------------------


def test_empirical_p_value_form() -> None:
    assert st.empirical_p_value(5.0, [1, 2, 3]) == pytest.approx(1 / 4)
    assert st.empirical_p_value(2.0, [1, 2, 3]) == pytest.approx(3 / 4)  # ties count as at least as extreme
    assert st.empirical_p_value(0.0, [1, 2, 3]) == 1.0
    with pytest.raises(ValueError, match="no null"):
        st.empirical_p_value(1.0, [])


def test_empirical_p_value_holds_its_level_at_any_rounds() -> None:
    rng = np.random.default_rng(11)
    runs, rounds = 10000, 100
    draws = rng.standard_normal((runs, rounds + 1))
    p = np.array([st.empirical_p_value(row[0], row[1:]) for row in draws])
    assert (p <= ALPHA).mean() <= upper(ALPHA, runs)
    # The naive #{null >= s} / B (0 when nothing is as extreme) rejects 6/101 of the time here.
    naive = (draws[:, 1:] >= draws[:, :1]).mean(axis=1)
    assert (naive <= ALPHA).mean() > upper(ALPHA, runs)


def test_rounds_for() -> None:
    assert st.rounds_for(0.05) == 1168
    assert st.rounds_for(0.01) > st.rounds_for(0.05)
    assert st.rounds_for(0.9, relative_error=0.9) >= 1  # 1 / (B + 1) <= alpha still holds
    assert 1 / (st.rounds_for(0.002, relative_error=0.9) + 1) <= 0.002


def _mean_gap(comparison: np.ndarray, window: np.ndarray) -> float:
    return float(abs(window.mean() - comparison.mean()))


def test_bootstrap_null_from_a_separate_half_keeps_the_level() -> None:
    # Live windows are fresh draws from the reference's population. A null of windows drawn from
    # the very reference they are compared with is too narrow (the old calibration); drawn from a
    # separate half it is not. Windows of one reference share its calibration, so the confidence
    # bound is taken over references (the independent unit), not over windows.
    rng = np.random.default_rng(5)
    n_ref, window, rounds, references, live = 300, 100, 99, 400, 10
    new_share, old_share = np.zeros(references), np.zeros(references)
    for r in range(references):
        reference = rng.standard_normal(n_ref)
        null = st.bootstrap_null(_mean_gap, reference, window, rounds, seed=r)
        comparison = reference[list(null.comparison_index)]
        assert set(null.comparison_index).isdisjoint(null.pool_index)
        windows = rng.standard_normal((live, window))
        new_share[r] = np.mean([null.p_value(_mean_gap(comparison, w)) <= ALPHA for w in windows])
        # The old way: windows resampled from the whole reference, compared with the whole reference.
        old_null = np.abs(rng.choice(reference, (rounds, window)).mean(axis=1) - reference.mean())
        old_share[r] = np.mean([st.empirical_p_value(_mean_gap(reference, w), old_null) <= ALPHA for w in windows])
    for share in (new_share, old_share):
        assert share.std() > 0
    margin = 3.3 * new_share.std() / math.sqrt(references)  # ~99.9% one-sided
    assert new_share.mean() - margin <= ALPHA
    assert old_share.mean() - 3.3 * old_share.std() / math.sqrt(references) > ALPHA


def test_bootstrap_null_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="cannot give"):
        st.bootstrap_null(_mean_gap, np.arange(10.0), 50, 5, seed=0, replace=False)


# -- 2. combining signals --------------------------------------------------------------------------


def _correlated_null_p(rho: float, runs: int, signals: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cov = np.full((signals, signals), rho) + (1 - rho) * np.eye(signals)
    z = rng.multivariate_normal(np.zeros(signals), cov, size=runs)
    return np.asarray(stats.norm.sf(z))


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_combinations_hold_their_level_under_correlation(rho: float) -> None:
    runs = 5000
    p = _correlated_null_p(rho, runs, 3, seed=int(rho * 10))
    cauchy = np.array([st.cauchy_combination(row) for row in p])
    simes = np.array([st.simes(row) for row in p])
    bonferroni = np.array([st.bonferroni(row) for row in p])
    # The tail of the Cauchy combination is exact only as alpha -> 0: at 0.05 allow its known slack.
    assert (cauchy <= ALPHA).mean() <= upper(ALPHA * 1.1, runs)
    assert (cauchy <= 0.01).mean() <= upper(0.01, runs)
    assert (simes <= ALPHA).mean() <= upper(ALPHA, runs)
    assert (bonferroni <= ALPHA).mean() <= upper(ALPHA, runs)
    fisher = stats.chi2.sf(-2 * np.log(p).sum(axis=1), 6)
    if rho >= 0.5:  # why not Fisher: it assumes independence
        assert (fisher <= ALPHA).mean() > 1.4 * ALPHA


def test_cauchy_combination_edges() -> None:
    assert st.cauchy_combination([0.03]) == pytest.approx(0.03)
    assert st.cauchy_combination([0.2, 0.2, 0.2]) == pytest.approx(0.2)
    assert st.cauchy_combination([1e-20, 0.9]) < 1e-19
    assert st.cauchy_combination([0.0, 0.5]) == 0.0
    assert st.cauchy_combination([1.0, 1.0]) == pytest.approx(1.0)
    assert st.cauchy_combination([0.01, 0.9], weights=[1, 0]) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        st.cauchy_combination([1.2])


def test_resampled_combination_level_and_power() -> None:
    rng = np.random.default_rng(3)
    cov = np.full((3, 3), 0.7) + 0.3 * np.eye(3)
    runs, rounds = 1500, 199
    null_p, shifted_p, bonf_shifted = [], [], []
    for _ in range(runs):
        replicas = rng.multivariate_normal(np.zeros(3), cov, size=rounds)
        quiet, drifted = rng.multivariate_normal(np.zeros(3), cov, size=2)
        drifted = drifted + 1.5  # three weak signals, each alone rarely significant
        null_p.append(st.resampled_combination(quiet, replicas))
        shifted_p.append(st.resampled_combination(drifted, replicas))
        bonf_shifted.append(st.bonferroni([st.empirical_p_value(s, replicas[:, i]) for i, s in enumerate(drifted)]))
    assert (np.array(null_p) <= ALPHA).mean() <= upper(ALPHA, runs)
    assert (np.array(shifted_p) <= ALPHA).mean() > (np.array(bonf_shifted) <= ALPHA).mean()


# -- 3. CUSUM over windows -------------------------------------------------------------------------


def _run_lengths_per_alarm(k: float, h: float, shift: float, chains: int, steps: int, seed: int) -> float:
    """Windows per alarm over many chains, restarting after each alarm (renewal: = the ARL)."""
    rng = np.random.default_rng(seed)
    value = np.zeros(chains)
    alarms = 0
    for _ in range(steps):
        value = np.maximum(0.0, value + rng.standard_normal(chains) + shift - k)
        fired = value >= h
        alarms += int(fired.sum())
        value[fired] = 0.0
    return chains * steps / alarms


@pytest.mark.parametrize("arl0", [100, 500])
def test_cusum_false_alarms_every_arl0_windows(arl0: int) -> None:
    h = seq.cusum_threshold_for_arl(0.5, arl0)
    assert seq.cusum_arl(0.5, h) == pytest.approx(arl0)
    measured = _run_lengths_per_alarm(0.5, h, 0.0, chains=2000, steps=2500, seed=arl0)
    # ~10,000 (ARL0 100) or ~10,000 (500) alarms: the simulation's own error is ~1-2%.
    assert 0.9 * arl0 <= measured <= 1.1 * arl0


def test_cusum_confirms_a_persistent_shift_within_a_few_windows() -> None:
    state = seq.CusumState.for_false_alarm_every(500)
    assert state.h == pytest.approx(4.38, abs=0.01)
    rng = np.random.default_rng(8)
    chains, shift = 4000, 2.0
    value = np.zeros(chains)
    first = np.full(chains, np.inf)
    for window in range(1, 11):
        value = np.maximum(0.0, value + rng.standard_normal(chains) + shift - state.k)
        first[(value >= state.h) & np.isinf(first)] = window
    assert (first <= 5).mean() >= 0.9  # measured 0.93
    assert (first <= 10).mean() >= 0.999
    assert np.median(first) <= 4
    assert seq.cusum_arl(state.k, state.h, shift) == pytest.approx(3.5, abs=0.1)


def test_cusum_single_odd_window_does_not_trigger() -> None:
    state = seq.CusumState.for_false_alarm_every(500)
    for p in (0.6, 0.3, 0.5):
        state = state.update(p)
    state = state.update(2e-4)  # one window at z = 3.5: once in 5,000 quiet windows
    assert not state.alarm
    for p in (0.5, 0.7, 0.4, 0.5):
        state = state.update(p)
    assert state.value < 1.0  # the odd window's evidence fades
    # The same evidence kept up confirms.
    persistent = seq.CusumState.for_false_alarm_every(500)
    for _ in range(3):
        persistent = persistent.update(0.01)  # z = 2.33 each
    assert persistent.alarm and persistent.windows == 3


def test_cusum_state_survives_a_restart_and_resets() -> None:
    p_values = [0.2, 0.04, 0.01, 0.5, 0.003]
    straight = seq.CusumState.for_false_alarm_every(200)
    restarted = seq.CusumState.for_false_alarm_every(200)
    for i, p in enumerate(p_values):
        straight = straight.update(p)
        restarted = seq.CusumState.from_dict(json.loads(json.dumps(restarted.to_dict()))).update(p)
        assert restarted == straight, i
    assert straight.alarm
    fresh = straight.reset()
    assert fresh.value == 0 and fresh.windows == 0 and not fresh.alarm and fresh.h == straight.h
    with pytest.raises(ValueError, match="CUSUM state"):
        seq.CusumState.from_dict({"kind": "msprt", "version": 1})


# -- 4. mSPRT: looking at every poll ---------------------------------------------------------------

LOOK_EVERY, LOOKS = 10, 200  # a look every 10 rows per arm, up to 2,000


def _cumulative(p: float, runs: int, rng: np.random.Generator) -> np.ndarray:
    return rng.binomial(LOOK_EVERY, p, (runs, LOOKS)).cumsum(axis=1)


def _ever_rejects(state: seq.MsprtState, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    n = np.arange(1, LOOKS + 1) * LOOK_EVERY
    log_lr = seq.msprt_log_lr(x1, n, x2, n, state.theta0, state.tau, state.alternative)
    return seq.always_valid_p(log_lr)[:, -1] <= state.alpha


@pytest.mark.parametrize(
    ("rate", "higher_is_better", "tau"), [(0.85, True, 0.05), (0.01, False, 0.01), (0.05, False, 0.02)]
)
def test_msprt_false_rollback_rate_with_a_look_every_10_rows(rate: float, higher_is_better: bool, tau: float) -> None:
    rng = np.random.default_rng(int(rate * 1000))
    runs = 4000
    state = seq.msprt_inferiority(ALPHA, tau=tau, higher_is_better=higher_is_better)
    x1, x2 = _cumulative(rate, runs, rng), _cumulative(rate, runs, rng)
    assert _ever_rejects(state, x1, x2).mean() <= upper(ALPHA, runs)
    if rate == 0.85:
        # The old rule: a one-sided z-test at every look rejects an equal challenger far too often.
        n = np.arange(1, LOOKS + 1) * LOOK_EVERY
        z = st.score_z(x1, n, x2, n)
        assert (z <= -stats.norm.isf(ALPHA)).any(axis=1).mean() > 4 * ALPHA


def test_msprt_power_against_a_real_drop() -> None:
    rng = np.random.default_rng(21)
    runs = 2000
    state = seq.msprt_inferiority(ALPHA, tau=0.05)
    worse = _ever_rejects(state, _cumulative(0.80, runs, rng), _cumulative(0.85, runs, rng))
    assert worse.mean() >= 0.9


def test_msprt_noninferiority_errors_both_ways() -> None:
    rng = np.random.default_rng(22)
    runs, margin = 4000, 0.05
    state = seq.msprt_noninferiority(margin, ALPHA)
    # Worse by exactly the margin: declared "not worse" at most alpha of the time.
    false_promotion = _ever_rejects(state, _cumulative(0.85 - margin, runs, rng), _cumulative(0.85, runs, rng))
    assert false_promotion.mean() <= upper(ALPHA, runs)
    equal = _ever_rejects(state, _cumulative(0.85, runs, rng), _cumulative(0.85, runs, rng))
    assert equal.mean() >= 0.9
    # Error rates: higher is worse, H0: p_ch - p_champ >= margin.
    errors = seq.msprt_noninferiority(0.02, ALPHA, higher_is_better=False)
    assert errors.theta0 == 0.02 and errors.alternative == "less"
    false_promotion = _ever_rejects(errors, _cumulative(0.03, runs, rng), _cumulative(0.01, runs, rng))
    assert false_promotion.mean() <= upper(ALPHA, runs)


def test_msprt_state_restart_and_cumulative_counts() -> None:
    rng = np.random.default_rng(4)
    looks = [
        (int(x1), n, int(x2), n)
        for n, x1, x2 in zip(
            range(50, 1001, 50), rng.binomial(50, 0.78, 20).cumsum(), rng.binomial(50, 0.86, 20).cumsum(), strict=True
        )
    ]
    straight = seq.msprt_inferiority(ALPHA, tau=0.05)
    restarted = straight
    for look in looks:
        straight = straight.update(*look)
        restarted = seq.MsprtState.from_dict(json.loads(json.dumps(restarted.to_dict()))).update(*look)
    assert restarted == straight
    assert straight.looks == 20 and straight.rejected and straight.p_value <= ALPHA
    assert straight.log_lr == pytest.approx(float(seq.msprt_log_lr(*looks[-1], straight.theta0, straight.tau, "less")))
    with pytest.raises(ValueError, match="cumulative"):
        straight.update(1, 10, 1, 10)
    empty = seq.msprt_inferiority(ALPHA).update(0, 0, 0, 0)
    assert empty.p_value == 1.0 and not empty.rejected


# -- 5. rare error rates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "theta0"), [(10, 50, 20, 60, -0.1), (3, 100, 1, 200, 0.02), (40, 50, 45, 50, -0.05)]
)
def test_restricted_mle_is_the_constrained_maximum(x1: int, n1: int, x2: int, n2: int, theta0: float) -> None:
    def negative_loglik(q: float) -> float:
        return -float(stats.binom.logpmf(x1, n1, q + theta0) + stats.binom.logpmf(x2, n2, q))

    lo, hi = max(0.0, -theta0) + 1e-12, min(1.0, 1 - theta0) - 1e-12
    best = optimize.minimize_scalar(negative_loglik, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12})
    p1t, p2t = st.restricted_mle(x1, n1, x2, n2, theta0)
    assert float(p2t) == pytest.approx(best.x, abs=1e-6)
    assert float(p1t) - float(p2t) == pytest.approx(theta0)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(1, 30, 0, 270), (3, 200, 1, 200), (0, 50, 4, 60)])
@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_exact_tests_match_scipy(x1: int, n1: int, x2: int, n2: int, alternative: str) -> None:
    table = [[x1, x2], [n1 - x1, n2 - x2]]  # scipy: one column per sample
    ours = st.exact_unconditional(x1, n1, x2, n2, alternative=alternative, ordering="fisher")  # type: ignore[arg-type]
    assert ours.p_value == pytest.approx(stats.boschloo_exact(table, alternative=alternative).pvalue, abs=1e-6)
    score = st.exact_unconditional(x1, n1, x2, n2, alternative=alternative)  # type: ignore[arg-type]
    barnard = stats.barnard_exact(table, alternative=alternative, pooled=True).pvalue
    assert score.p_value == pytest.approx(barnard, abs=1e-6)


def test_one_failure_in_30_against_none_in_270_does_not_roll_back() -> None:
    result = st.compare_proportions(1, 30, 0, 270, alternative="greater")
    assert result.method == st.METHOD_BOSCHLOO
    assert not result.rejects(ALPHA)
    assert result.p_value == pytest.approx(0.0718, abs=1e-3)
    assert st.farrington_manning(1, 30, 0, 270).rejects(ALPHA)  # what the asymptotic test would do


def _exact_rejection_rate(rate: float, n: int, theta0: float, max_count: int) -> tuple[float, float]:
    """The exact false-rollback probability at error rate ``rate`` in both arms (challenger shifted by
    theta0), summed over every table with at most ``max_count`` errors per arm; and the mass left out."""
    pmf1 = stats.binom.pmf(np.arange(max_count + 1), n, rate + theta0)
    pmf2 = stats.binom.pmf(np.arange(max_count + 1), n, rate)
    total = 0.0
    for x1 in range(max_count + 1):
        for x2 in range(max_count + 1):
            if st.compare_proportions(x1, n, x2, n, theta0, "greater").rejects(ALPHA):
                total += pmf1[x1] * pmf2[x2]
    return total, 1 - pmf1.sum() * pmf2.sum()


def test_rare_error_false_rollback_rate_is_at_most_alpha() -> None:
    # p = 0.01, 200 rows each: computed exactly over the tables, no simulation error.
    rate, left_out = _exact_rejection_rate(0.01, 200, 0.0, 9)
    assert left_out < 1e-4
    assert rate + left_out <= ALPHA
    assert rate > 0.005  # measured 0.0083: exact, hence conservative at so few events, but it does reject


def test_rare_error_power_3_percent_vs_1_percent() -> None:
    rng = np.random.default_rng(9)
    runs, n = 400, 200
    x1, x2 = rng.binomial(n, 0.03, runs), rng.binomial(n, 0.01, runs)
    cache: dict[tuple[int, int], bool] = {}
    hits = 0
    for a, b in zip(x1, x2, strict=True):
        key = (int(a), int(b))
        if key not in cache:
            cache[key] = st.compare_proportions(key[0], n, key[1], n).rejects(ALPHA)
        hits += cache[key]
    assert hits / runs >= 0.25  # measured 0.30; the old shifted z-test: 0.25 (issue 15) at an invalid level


def test_score_test_level_with_a_margin_at_large_counts() -> None:
    rng = np.random.default_rng(10)
    runs, n, margin = 20000, 800, 0.05
    x1, x2 = rng.binomial(n, 0.85 - margin, runs), rng.binomial(n, 0.85, runs)
    z = st.score_z(x1, n, x2, n, -margin)
    rejected = (stats.norm.sf(z) <= ALPHA).mean()  # H0: p1 - p2 <= -margin, true at the boundary
    assert lower(ALPHA, runs) <= rejected <= upper(ALPHA, runs)
    assert st.compare_proportions(int(x1[0]), n, int(x2[0]), n, -margin).method == st.METHOD_SCORE


# -- 6. paired shadow comparisons ------------------------------------------------------------------


def _paired(runs: int, champion_only: float, challenger_only: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    both = 0.85 - champion_only
    return rng.multinomial(n, [champion_only, challenger_only, both, 1 - champion_only - challenger_only - both], runs)


def test_paired_test_sees_a_drop_that_the_unpaired_misses() -> None:
    # 200 pairs, champion 0.85, challenger 0.80, 9% disagreement (7% champion only, 2% challenger only).
    runs, n = 3000, 200
    cells = _paired(runs, 0.07, 0.02, n, seed=12)
    paired = np.array([st.paired_proportion_test(int(c[0]), int(c[1]), n).p_value for c in cells])
    unpaired = stats.norm.sf(st.score_z(cells[:, 0] + cells[:, 2], n, cells[:, 1] + cells[:, 2], n))
    # H1: champion-only exceeds challenger-only, i.e. the challenger is worse.
    assert (paired <= ALPHA).mean() >= 0.6  # measured 0.71; unpaired 0.26
    assert (paired <= ALPHA).mean() >= 1.5 * (unpaired <= ALPHA).mean()


def test_paired_tests_hold_their_level() -> None:
    runs, n = 4000, 200
    equal = _paired(runs, 0.045, 0.045, n, seed=13)
    exact = np.array([st.paired_proportion_test(int(c[0]), int(c[1]), n).p_value for c in equal])
    assert (exact <= ALPHA).mean() <= upper(ALPHA, runs)
    # Tango with a non-inferiority margin, at the boundary: the challenger worse by exactly 0.03.
    boundary = _paired(runs, 0.06, 0.03, n, seed=14)
    # theta = p_challenger - p_champion = (challenger_only - champion_only) / n; H0: theta <= -0.03.
    tango = np.array([st.paired_proportion_test(int(c[1]), int(c[0]), n, theta0=-0.03).p_value for c in boundary])
    assert (tango <= ALPHA).mean() <= upper(ALPHA, runs)
    assert lower(ALPHA, runs) <= (tango <= ALPHA).mean()


def test_tango_is_mcnemar_at_zero() -> None:
    u, v, n = 14, 4, 200
    z = st.paired_proportion_test(u, v, n, theta0=1e-12).statistic
    assert z == pytest.approx((u - v) / math.sqrt(u + v), rel=1e-6)


# -- 7. clustered rows -----------------------------------------------------------------------------


def test_cluster_robust_variance_restores_the_level() -> None:
    rng = np.random.default_rng(15)
    runs, callers, rows, rate, icc = 3000, 200, 5, 0.85, 0.05
    concentration = (1 - icc) / icc
    clusters = np.repeat(np.arange(2 * callers), rows)
    arm = np.repeat(np.arange(2 * callers) < callers, rows)
    naive_hits = robust_hits = 0
    for _ in range(runs):
        caller_rate = rng.beta(rate * concentration, (1 - rate) * concentration, 2 * callers)
        y = (rng.random(2 * callers * rows) < np.repeat(caller_rate, rows)).astype(float)
        result = st.clustered_proportion_diff(y, np.ones_like(y), clusters, arm)
        robust_hits += result.p_value <= ALPHA
        naive = float(st.score_z(y[arm].sum(), arm.sum(), y[~arm].sum(), (~arm).sum()))
        naive_hits += 2 * stats.norm.sf(abs(naive)) <= ALPHA
    assert lower(ALPHA, runs) <= robust_hits / runs <= upper(ALPHA, runs)
    assert naive_hits / runs > upper(ALPHA, runs)  # issue 15 measured 0.072


def test_clustered_with_one_row_per_cluster_is_the_unpooled_z() -> None:
    y = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=float)
    arm = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    result = st.clustered_proportion_diff(y, np.ones(10), np.arange(10), arm)
    p1, p0 = 0.6, 0.8
    se = math.sqrt(p1 * (1 - p1) / 5 + p0 * (1 - p0) / 5) * math.sqrt(10 / 9)
    assert result.statistic == pytest.approx((p1 - p0) / se)


# -- 8. tail latency -------------------------------------------------------------------------------


def test_tail_test_flags_a_slow_p95_that_mann_whitney_misses() -> None:
    rng = np.random.default_rng(16)
    champion = rng.lognormal(math.log(5), 0.42, 400)  # median 5 ms, p95 ~10 ms
    challenger = rng.lognormal(math.log(3.5), 0.42, 400)  # faster for most requests ...
    slow = rng.random(400) < 0.1
    challenger[slow] = rng.normal(100, 5, slow.sum())  # ... but p95 ~100 ms
    assert np.percentile(challenger, 95) > 80 and np.percentile(champion, 95) < 12
    assert st.tail_exceedance_test(challenger, champion).rejects(ALPHA)
    assert stats.mannwhitneyu(challenger, champion, alternative="greater").pvalue > ALPHA


def test_tail_test_level_on_equal_and_tolerated_latencies() -> None:
    rng = np.random.default_rng(17)
    runs = 3000
    equal = [
        st.tail_exceedance_test(rng.lognormal(2, 0.5, 200), rng.lognormal(2, 0.5, 200)).p_value for _ in range(runs)
    ]
    assert (np.array(equal) <= ALPHA).mean() <= upper(ALPHA, runs)
    # 20% slower with a tolerance of 1.5x: rarely flagged.
    tolerated = [
        st.tail_exceedance_test(1.2 * rng.lognormal(2, 0.5, 200), rng.lognormal(2, 0.5, 200), max_ratio=1.5).p_value
        for _ in range(500)
    ]
    assert (np.array(tolerated) <= ALPHA).mean() <= upper(ALPHA, 500)


# -- 9. sample sizes -------------------------------------------------------------------------------


def test_two_sided_sample_size_covers_a_drop_too() -> None:
    n = st.sample_size_two_sided(0.85, 0.05, ALPHA, 0.8)
    assert n == 906  # set by the drop to 0.80; the old plan (a gain, with a correction) was 726
    rng = np.random.default_rng(18)
    runs = 4000
    for other in (0.80, 0.90):
        z = st.score_z(rng.binomial(n, other, runs), n, rng.binomial(n, 0.85, runs), n)
        power = (2 * stats.norm.sf(np.abs(z)) <= ALPHA).mean()
        assert power >= lower(0.8, runs)


def test_noninferiority_sample_size_has_its_power_both_ways() -> None:
    n = st.sample_size_noninferiority(0.85, 0.05, ALPHA, 0.8)
    rng = np.random.default_rng(19)
    runs = 4000
    champion = rng.binomial(n, 0.85, runs)
    promote = stats.norm.sf(st.score_z(rng.binomial(n, 0.85, runs), n, champion, n, -0.05)) <= ALPHA
    rollback = stats.norm.cdf(st.score_z(rng.binomial(n, 0.80, runs), n, champion, n, 0.0)) <= ALPHA
    assert promote.mean() >= lower(0.8, runs) and rollback.mean() >= lower(0.8, runs)
    assert min(promote.mean(), rollback.mean()) <= upper(0.8, runs)  # planned for, not far beyond
    errors = st.sample_size_noninferiority(0.01, 0.01, ALPHA, 0.8, higher_is_better=False)
    assert errors > 0


def test_ab_baseline_is_one_rule() -> None:
    assert st.ab_baseline(0.9, 0.8) == st.Baseline(0.9, "configured")
    assert st.ab_baseline(None, 0.8).value == 0.8
    assert st.ab_baseline().value == st.WORST_CASE_BASELINE == 0.5
    assert st.sample_size_two_sided(0.5, 0.05, ALPHA, 0.8) > st.sample_size_two_sided(0.85, 0.05, ALPHA, 0.8)


def test_the_tail_test_survives_ties_at_the_pooled_quantile():
    """Constant latencies (a log written with one latency per batch, or rounded to the ms): the
    pooled p95 falls on a tie and nothing lies strictly above it; the values at it count."""
    from driftloop.core.stats import tail_exceedance_test

    slow = tail_exceedance_test([40.0] * 200, [1.0] * 300, 0.95, max_ratio=1.5, slack=2.0)
    assert slow.p_value < 1e-10
    same = tail_exceedance_test([1.0] * 200, [1.0] * 300, 0.95, max_ratio=1.5, slack=2.0)
    assert same.p_value > 0.5
