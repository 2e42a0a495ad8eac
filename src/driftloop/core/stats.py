"""The statistical core behind every automatic decision: p-values, tests and sample sizes.

Pure functions over plain numbers and numpy arrays, results as frozen dataclasses. Nothing here
knows about settings, logs or Evidently; the monitor and the rollout pass numbers in and read a
p-value (and the boundary it is compared with) out. Each procedure says which error rate it
controls and under which assumption; ``tests/unit/test_stats.py`` measures those rates on simulated
data. The procedures that look again and again (CUSUM over windows, mSPRT over polls) live in
:mod:`driftloop.core.sequential`.

Vocabulary: a difference is always *first minus second* (challenger minus champion), ``theta0`` the
boundary of the null hypothesis, and ``alternative`` scipy's words: ``"greater"`` means
H1: difference > theta0, ``"less"`` H1: difference < theta0, ``"two-sided"`` H1: difference != theta0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

Alternative = Literal["greater", "less", "two-sided"]
FloatArray = npt.NDArray[np.float64]

METHOD_SCORE = "Farrington-Manning score test"
METHOD_EXACT = "exact unconditional test (Chan 1998, score-ordered)"
METHOD_BOSCHLOO = "Boschloo exact unconditional test (Fisher-ordered)"
METHOD_MCNEMAR_EXACT = "exact McNemar (binomial on discordant pairs)"
METHOD_MCNEMAR_MID_P = "mid-p McNemar (binomial on discordant pairs)"
METHOD_TANGO = "Tango score test for paired proportions"
METHOD_CLUSTER = "cluster-robust (CR1 sandwich) z-test"
METHOD_TAIL = "tail exceedance test (Fisher exact on counts above the pooled quantile)"

# Tables up to this many cells ((n1 + 1) * (n2 + 1)) are tested exactly when events are rare.
EXACT_MAX_CELLS = 1_000_000
# An expected count below this in any cell (under the null) is "rare": the normal approximation
# behind the score test is then not trusted and the exact test is used where it fits.
RARE_EXPECTED_COUNT = 10.0
# Planning with no measured baseline: p = 0.5 maximises p(1 - p), so no design is planned too small.
WORST_CASE_BASELINE = 0.5


@dataclass(frozen=True)
class HypothesisTest:
    """One test's outcome: what was estimated, against which null boundary, and how surely."""

    __test__ = False  # a result type, not a pytest test class

    method: str
    estimate: float  # the observed difference (or share, or statistic) the test is about
    theta0: float  # the boundary of the null hypothesis
    alternative: str
    statistic: float  # z, or the count the exact test conditions on
    p_value: float

    def rejects(self, alpha: float) -> bool:
        return self.p_value <= alpha


def _check_alternative(alternative: str) -> None:
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative {alternative!r}: expected 'greater', 'less' or 'two-sided'")


def _p_from_z(z: float, alternative: str) -> float:
    if alternative == "greater":
        return float(stats.norm.sf(z))
    if alternative == "less":
        return float(stats.norm.cdf(z))
    return float(min(1.0, 2 * stats.norm.sf(abs(z))))


def _check_counts(x: float, n: float, what: str) -> None:
    if n <= 0:
        raise ValueError(f"{what}: n must be positive, got {n}")
    if not 0 <= x <= n:
        raise ValueError(f"{what}: count {x} is outside [0, {n}]")


# -- 1. calibrated p-values per signal -------------------------------------------------------------


def empirical_p_value(statistic: float, null_samples: npt.ArrayLike) -> float:
    """(1 + #{null >= statistic}) / (1 + B): the Monte Carlo p-value of a larger-is-worse statistic.

    Valid at every B (Davison & Hinkley 1997, §4.2; Phipson & Smyth 2010): when the observed value is
    exchangeable with the B null draws, P(p <= alpha) <= alpha exactly. The naive #{null >= s} / B is
    not (it can be 0). The smallest attainable value is 1 / (B + 1): see :func:`rounds_for`.
    """
    null = np.asarray(null_samples, dtype=float).ravel()
    if null.size == 0:
        raise ValueError("empirical_p_value: no null samples")
    if math.isnan(statistic) or np.isnan(null).any():
        raise ValueError("empirical_p_value: NaN in the statistic or the null samples")
    return float((1 + np.count_nonzero(null >= statistic)) / (1 + null.size))


def rounds_for(alpha: float, relative_error: float = 0.25, confidence: float = 0.95) -> int:
    """Null replicas B needed to state a rate ``alpha``: the Monte Carlo error of the tail
    probability at alpha, sqrt(alpha (1 - alpha) / B), is at most ``relative_error * alpha`` with the
    given two-sided confidence, and 1 / (B + 1) <= alpha so that alpha is reachable at all.

    E.g. alpha 0.05 -> 1,168 rounds; alpha 0.01 -> 6,085. Twenty rounds, as "worst of 20" used, pin
    a level near 1/21 only, with a Monte Carlo error as large as the level itself.
    """
    if not 0 < alpha < 1 or not 0 < relative_error < 1 or not 0 < confidence < 1:
        raise ValueError(
            "rounds_for: alpha, relative_error, confidence must be in (0, 1), "
            f"got {alpha}, {relative_error}, {confidence}"
        )
    z = float(stats.norm.isf((1 - confidence) / 2))
    by_error = z * z * (1 - alpha) / (alpha * relative_error**2)
    return max(math.ceil(by_error), math.ceil(1 / alpha - 1))


@dataclass(frozen=True)
class NullDistribution:
    """A statistic's null samples, and the rows of the reference every live window must be compared
    with (``comparison_index``): the null was measured against exactly those rows."""

    samples: tuple[float, ...]
    comparison_index: tuple[int, ...]
    pool_index: tuple[int, ...]
    window_size: int

    def p_value(self, statistic: float) -> float:
        return empirical_p_value(statistic, self.samples)


def bootstrap_null(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    reference: np.ndarray,
    window_size: int,
    rounds: int,
    *,
    seed: int,
    comparison_share: float = 0.5,
    replace: bool = True,
) -> NullDistribution:
    """Null samples of ``statistic(comparison, window)`` with no drift, for :func:`empirical_p_value`.

    The reference (rows on axis 0) is split at random, once, into a *comparison* part and a *pool*;
    each round draws a window of ``window_size`` rows from the pool (with replacement by default: a
    bootstrap replica of the reference population) and measures it against the comparison part.
    Live windows must then be measured against the same comparison rows.

    The null must never compare a window with the reference it was drawn from: rows shared by both
    sides make them look alike, so the null is too narrow and the false-alarm rate above its stated
    level (the old "worst of 20" calibration understated the noise by up to 1.3x this way). With
    disjoint sides the rate holds on average over references (measured: 0.054 at nominal 0.05,
    against 0.096 for the old way). For *one* reference it still varies, because the pool's own
    sampling error shifts the null: with windows 2/3 of the pool, a tenth of references gave 0.2.
    Keep the pool at ~10 windows or more (then that error is a tenth of the window's) before a
    rate per deployment is stated, and more so under a CUSUM, which accumulates any bias.

    A statistic over a data frame can take row positions: pass ``np.arange(len(frame))`` as the
    reference and index the frame inside ``statistic``.
    """
    ref = np.asarray(reference)
    n = ref.shape[0]
    if not 0 < comparison_share < 1:
        raise ValueError(f"bootstrap_null: comparison_share must be in (0, 1), got {comparison_share}")
    if window_size <= 0 or rounds <= 0:
        raise ValueError(f"bootstrap_null: window_size and rounds must be positive, got {window_size}, {rounds}")
    n_comparison = round(n * comparison_share)
    n_pool = n - n_comparison
    if n_comparison < 1 or n_pool < 1 or (not replace and n_pool < window_size):
        raise ValueError(
            f"bootstrap_null: a reference of {n} rows cannot give a comparison part and a pool "
            f"for windows of {window_size}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    comparison_idx, pool_idx = np.sort(order[:n_comparison]), np.sort(order[n_comparison:])
    comparison = ref[comparison_idx]
    samples = []
    for _ in range(rounds):
        window = ref[rng.choice(pool_idx, size=window_size, replace=replace)]
        samples.append(float(statistic(comparison, window)))
    return NullDistribution(
        samples=tuple(samples),
        comparison_index=tuple(int(i) for i in comparison_idx),
        pool_index=tuple(int(i) for i in pool_idx),
        window_size=window_size,
    )


# -- 2. combining signals ------------------------------------------------------------------------


def _weights(weights: npt.ArrayLike | None, size: int) -> FloatArray:
    if weights is None:
        return np.full(size, 1.0 / size)
    w = np.asarray(weights, dtype=float).ravel()
    if w.shape != (size,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {size} non-negative numbers with a positive sum, got {w}")
    return np.asarray(w / w.sum(), dtype=float)


def _p_array(p_values: npt.ArrayLike) -> FloatArray:
    p = np.asarray(p_values, dtype=float).ravel()
    if p.size == 0:
        raise ValueError("no p-values to combine")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    return p


def cauchy_combination(p_values: npt.ArrayLike, weights: npt.ArrayLike | None = None) -> float:
    """Cauchy combination test (Liu & Xie 2020, JASA 115:393): T = sum w_i tan((0.5 - p_i) pi),
    p = P(Cauchy > T). Valid, approximately, under *arbitrary* dependence between the signals, and
    the more exact the smaller the level (the tail of T is Cauchy whatever the correlation).

    Why not Fisher or Stouffer: they assume independent signals, and correlated signals (text and
    embedding drift see much the same) inflate their false-alarm rate several-fold. Why not "k of
    N" votes: with correlated signals it is close to one signal, with no stated level.
    """
    p = _p_array(p_values)
    w = _weights(weights, p.size)
    if (p == 0).any():
        return 0.0
    # tan((0.5 - p) pi) = 1 / tan(p pi); for tiny p it is 1 / (p pi) without the rounding of tan.
    terms = np.where(p < 1e-15, 1 / (p * np.pi), 1 / np.tan(np.minimum(p, 1 - 1e-16) * np.pi))
    t = float(np.dot(w, terms))
    if t > 1e15:
        return float(min(1.0, 1 / (t * np.pi)))
    return float(stats.cauchy.sf(t))


def bonferroni(p_values: npt.ArrayLike, weights: npt.ArrayLike | None = None) -> float:
    """Weighted Bonferroni: min_i p_i / w_i, at most 1. Valid under any dependence, conservative
    when the signals are correlated; the fallback when nothing else may be assumed."""
    p = _p_array(p_values)
    w = _weights(weights, p.size)
    with np.errstate(divide="ignore"):
        ratios = np.where(w > 0, p / w, np.inf)
    return float(min(1.0, ratios.min()))


def simes(p_values: npt.ArrayLike) -> float:
    """Simes (1986): min_i L p_(i) / i. Valid under independence and positive regression dependence
    (e.g. one-sided tests of positively correlated normal statistics, as drift signals are); never
    less powerful than Bonferroni."""
    p = np.sort(_p_array(p_values))
    ranks = np.arange(1, p.size + 1)
    return float(min(1.0, (p.size * p / ranks).min()))


def resampled_combination(statistics: npt.ArrayLike, null_samples: npt.ArrayLike) -> float:
    """Combine L signals with their dependence measured, not assumed: a p-value for Fisher's
    -2 sum log p computed on every null replica *jointly* (Westfall & Young 1993, ch. 2).

    ``statistics`` holds the live window's L values, ``null_samples`` a (B, L) array: the same L
    signals measured on each of B no-drift replicas (each row from the same replica, so the null
    keeps the signals' correlation). Each replica's per-signal p-values are its ranks among the
    others; the combined p is :func:`empirical_p_value` of the live Fisher statistic among the
    replicas'. Several weak signals add up as in Fisher, while the level stays exact under the
    dependence the replicas carry.
    """
    s = np.asarray(statistics, dtype=float).ravel()
    null = np.asarray(null_samples, dtype=float)
    if null.ndim != 2 or null.shape[1] != s.size or null.shape[0] < 2:
        raise ValueError(f"resampled_combination: null_samples must be (B >= 2, {s.size}), got {null.shape}")
    b = null.shape[0]
    live_p = (1 + (null >= s).sum(axis=0)) / (1 + b)
    # For replica j: (1 + #{others >= own}) / B, i.e. its rank among the B - 1 others, as for a live window.
    sorted_null = np.sort(null, axis=0)
    at_least = b - np.stack(
        [np.searchsorted(sorted_null[:, i], null[:, i], side="left") for i in range(s.size)], axis=1
    )
    null_p = at_least / b  # at_least counts the replica itself, so this is (1 + #others >= own) / B
    live_fisher = float(-2 * np.log(live_p).sum())
    null_fisher = -2 * np.log(null_p).sum(axis=1)
    return empirical_p_value(live_fisher, null_fisher)


# -- 5. two independent proportions: Farrington–Manning score and exact unconditional tests ---------


def restricted_mle(
    x1: npt.ArrayLike, n1: float | FloatArray, x2: npt.ArrayLike, n2: float | FloatArray, theta0: float
) -> tuple[FloatArray, FloatArray]:
    """Restricted MLE (p1~, p2~) under p1 - p2 = theta0 (Farrington & Manning 1990, closed form of
    the cubic in Miettinen & Nurminen 1985); vectorised over the counts."""
    p1 = np.asarray(x1, dtype=float) / n1
    p2 = np.asarray(x2, dtype=float) / n2
    if theta0 == 0:
        pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
        return pooled, pooled
    ratio = n2 / n1
    a = 1 + ratio
    b = -(1 + ratio + p1 + ratio * p2 + theta0 * (ratio + 2))
    c = theta0**2 + theta0 * (2 * p1 + ratio + 1) + p1 + ratio * p2
    d = -p1 * theta0 * (1 + theta0)
    v = b**3 / (27 * a**3) - b * c / (6 * a**2) + d / (2 * a)
    u = np.sign(v) * np.sqrt(np.maximum(b**2 / (9 * a**2) - c / (3 * a), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where(u != 0, v / u**3, 0.0)
    w = (np.pi + np.arccos(np.clip(cosine, -1.0, 1.0))) / 3
    p1t = np.clip(2 * u * np.cos(w) - b / (3 * a), 0.0, 1.0)
    p2t = np.clip(p1t - theta0, 0.0, 1.0)
    return p1t, p2t


def score_z(
    x1: npt.ArrayLike, n1: float | FloatArray, x2: npt.ArrayLike, n2: float | FloatArray, theta0: float = 0.0
) -> FloatArray:
    """Farrington–Manning z for H0: p1 - p2 = theta0, vectorised over the counts.

    The variance is taken at the restricted MLE (the null's own variance), which keeps the level
    where the Wald z (variance at the observed rates) fails, and is exactly the pooled z at theta0 = 0.
    No continuity correction: the sample sizes below are planned for this same statistic.
    """
    p1t, p2t = restricted_mle(x1, n1, x2, n2, theta0)
    diff = np.asarray(x1, dtype=float) / n1 - np.asarray(x2, dtype=float) / n2 - theta0
    var = p1t * (1 - p1t) / n1 + p2t * (1 - p2t) / n2
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 1e-15, diff / np.sqrt(var), 0.0)
    return np.asarray(z, dtype=float)


def farrington_manning(
    x1: int, n1: int, x2: int, n2: int, theta0: float = 0.0, alternative: Alternative = "greater"
) -> HypothesisTest:
    """Score test (Farrington & Manning 1990, Stat Med 9:1447) of p1 - p2 against ``theta0``: the
    non-inferiority / superiority test with a margin. Asymptotic: trust it when every expected
    count is at least ~10; :func:`compare_proportions` picks the exact test otherwise."""
    _check_alternative(alternative)
    _check_counts(x1, n1, "farrington_manning")
    _check_counts(x2, n2, "farrington_manning")
    z = float(score_z(x1, n1, x2, n2, theta0))
    return HypothesisTest(METHOD_SCORE, x1 / n1 - x2 / n2, theta0, alternative, z, _p_from_z(z, alternative))


def _nuisance_grid(theta0: float) -> FloatArray:
    lo, hi = max(0.0, -theta0), min(1.0, 1.0 - theta0)
    span = hi - lo
    # Even steps plus log-spaced ones at both ends, where rare rates put the supremum.
    edges = np.logspace(-6, -0.5, 60) * span
    grid = np.concatenate([np.linspace(lo, hi, 201), lo + edges, hi - edges])
    return np.unique(np.clip(grid, lo, hi))


@functools.lru_cache(maxsize=16)
def _ordering(n1: int, n2: int, theta0: float, ordering: str, alternative: str) -> tuple[FloatArray, FloatArray]:
    """The score z of every table and its rank for the exact tests (larger = more extreme); cached,
    since a rollout asks again at each poll with the same arm sizes far more often than not."""
    k1, k2 = np.arange(n1 + 1), np.arange(n2 + 1)
    z = score_z(k1[:, None], n1, k2[None, :], n2, theta0)
    if ordering == "fisher":
        # Smaller conditional p = more extreme; the "less" side is the "greater" side of the swapped arms.
        hits = k1[:, None] if alternative == "greater" else k2[None, :]
        size = n1 if alternative == "greater" else n2
        rank = -np.asarray(stats.hypergeom.sf(hits - 1, n1 + n2, k1[:, None] + k2[None, :], size), dtype=float)
    else:
        rank = z if alternative == "greater" else -z
    z.flags.writeable = False
    rank.flags.writeable = False
    return z, rank


@functools.lru_cache(maxsize=16)
def _grid_pmfs(n1: int, n2: int, theta0: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    grid = _nuisance_grid(theta0)
    pmf1 = np.asarray(
        stats.binom.pmf(np.arange(n1 + 1)[None, :], n1, np.clip(grid + theta0, 0, 1)[:, None]), dtype=float
    )
    pmf2 = np.asarray(stats.binom.pmf(np.arange(n2 + 1)[None, :], n2, grid[:, None]), dtype=float)
    for array in (grid, pmf1, pmf2):
        array.flags.writeable = False
    return grid, pmf1, pmf2


def exact_unconditional(
    x1: int,
    n1: int,
    x2: int,
    n2: int,
    theta0: float = 0.0,
    alternative: Literal["greater", "less"] = "greater",
    *,
    ordering: Literal["score", "fisher"] = "score",
) -> HypothesisTest:
    """Exact unconditional test of p1 - p2 against ``theta0``.

    Every table of the two binomials is ranked by an ordering statistic; the p-value is the largest
    probability, over the nuisance rate on the null boundary p1 = p2 + theta0 (a fine grid,
    log-spaced near 0 and 1, then refined around its peak), of a table at least as extreme as the
    observed one. Valid at every sample size. Orderings:

    - ``"score"``: the Farrington–Manning z (Chan 1998, Stat Med 17:1403); takes a margin. At
      theta0 = 0 it is Barnard's test with the pooled z (scipy's ``barnard_exact(pooled=True)``).
    - ``"fisher"``: Fisher's one-sided conditional p-value (Boschloo 1970), theta0 = 0 only;
      uniformly more powerful than Fisher's exact test, and steadier than the score ordering in very
      unequal arms: 1/30 vs 0/270 gives 0.072 (score ordering 0.041, Fisher 0.10, the z-test 0.001).

    Cost: (n1 + 1)(n2 + 1) tables times ~320 nuisance values.
    """
    if alternative not in ("greater", "less"):
        raise ValueError(f"exact_unconditional is one-sided: alternative {alternative!r}")
    if ordering == "fisher" and theta0 != 0:
        raise ValueError("exact_unconditional: the Fisher (Boschloo) ordering tests theta0 = 0 only")
    _check_counts(x1, n1, "exact_unconditional")
    _check_counts(x2, n2, "exact_unconditional")
    if (n1 + 1) * (n2 + 1) > EXACT_MAX_CELLS:
        raise ValueError(f"exact_unconditional: {n1 + 1} x {n2 + 1} tables is above {EXACT_MAX_CELLS}")
    z, rank = _ordering(n1, n2, theta0, ordering, alternative)
    statistic = float(z[x1, x2])
    observed = float(rank[x1, x2])
    # Ties within rounding are as extreme as the observed table (relative for Fisher's tiny p-values).
    tie = 1e-9 * max(1.0, abs(observed)) if ordering == "score" else 1e-7 * abs(observed)
    mask = (rank >= observed - tie).astype(float)
    k1, k2 = np.arange(n1 + 1), np.arange(n2 + 1)
    lo, hi = max(0.0, -theta0), min(1.0, 1.0 - theta0)

    def tail(p2: FloatArray) -> FloatArray:
        p1 = np.clip(p2 + theta0, 0.0, 1.0)
        pmf1 = stats.binom.pmf(k1[None, :], n1, p1[:, None])
        pmf2 = stats.binom.pmf(k2[None, :], n2, p2[:, None])
        return np.asarray(((pmf1 @ mask) * pmf2).sum(axis=1), dtype=float)

    grid, pmf1, pmf2 = _grid_pmfs(n1, n2, theta0)
    values = np.asarray(((pmf1 @ mask) * pmf2).sum(axis=1), dtype=float)
    best = int(values.argmax())
    # The supremum may fall between grid points: refine on the two neighbouring intervals.
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    fine = np.clip(np.linspace(left, right, 41), lo, hi)
    p_value = float(min(1.0, max(values.max(), tail(fine).max())))
    return HypothesisTest(
        METHOD_EXACT if ordering == "score" else METHOD_BOSCHLOO,
        x1 / n1 - x2 / n2,
        theta0,
        alternative,
        statistic,
        p_value,
    )


def compare_proportions(
    x1: int, n1: int, x2: int, n2: int, theta0: float = 0.0, alternative: Literal["greater", "less"] = "greater"
) -> HypothesisTest:
    """The one two-proportion test the rollout uses: exact unconditional when events are rare (an
    expected count under the null below :data:`RARE_EXPECTED_COUNT`) and the tables fit
    :data:`EXACT_MAX_CELLS` (Boschloo at theta0 = 0, Chan's score-ordered test with a margin), the
    Farrington–Manning score test otherwise.

    Count failures per request (a failed batch of 8 texts is 1 failure, not 8), or rows are not
    independent and no test here holds its level; for callers with sticky routing see
    :func:`clustered_proportion_diff`.
    """
    _check_counts(x1, n1, "compare_proportions")
    _check_counts(x2, n2, "compare_proportions")
    p1t, p2t = restricted_mle(x1, n1, x2, n2, theta0)
    expected = min(n1 * float(p1t), n1 * (1 - float(p1t)), n2 * float(p2t), n2 * (1 - float(p2t)))
    if expected < RARE_EXPECTED_COUNT and (n1 + 1) * (n2 + 1) <= EXACT_MAX_CELLS:
        ordering: Literal["score", "fisher"] = "fisher" if theta0 == 0 else "score"
        return exact_unconditional(x1, n1, x2, n2, theta0, alternative, ordering=ordering)
    return farrington_manning(x1, n1, x2, n2, theta0, alternative)


# -- 6. paired proportions (shadow: the same requests, the same labels) ----------------------------


def _tango_restricted(u: int, v: int, n: int, theta0: float) -> float:
    """Restricted MLE of P(second only) under P(first only) - P(second only) = theta0: the feasible
    root of 2n q^2 - [(u + v)(1 - theta0) - 2 theta0 (v + m)] q - v theta0 (1 - theta0) = 0."""
    m = n - u - v
    b = (u + v) * (1 - theta0) - 2 * theta0 * (v + m)
    c = v * theta0 * (1 - theta0)
    disc = math.sqrt(max(b * b + 8 * n * c, 0.0))
    candidates = [(b + disc) / (4 * n), (b - disc) / (4 * n)]
    lo, hi = max(0.0, -theta0), (1 - theta0) / 2

    def loglik(q: float) -> float:
        total = 0.0
        for count, prob in ((u, q + theta0), (v, q), (m, 1 - 2 * q - theta0)):
            if count:
                total += count * math.log(prob) if prob > 0 else -math.inf
        return total

    feasible = [min(max(q, lo), hi) for q in candidates]
    return max(feasible, key=loglik)


def paired_proportion_test(
    first_only: int,
    second_only: int,
    n_pairs: int,
    theta0: float = 0.0,
    alternative: Literal["greater", "less"] = "greater",
    *,
    mid_p: bool = False,
) -> HypothesisTest:
    """Paired test of p_first - p_second on the same requests (shadow: champion and challenger
    answer the same request ids, judged by the same labels).

    ``first_only`` counts pairs where only the first succeeded, ``second_only`` where only the second
    did; concordant pairs carry no information about the difference at theta0 = 0, which is why a
    paired test sees a 5-point drop with 9% disagreement far more often than an unpaired one.

    theta0 = 0: exact McNemar, the binomial on the discordant pairs (mid-p on request: closer to
    nominal, not guaranteed below it). theta0 != 0 (a non-inferiority margin): Tango's score test
    (Tango 1998, Stat Med 17:891), z = (u - v - n theta0) / sqrt(n (2 q~ + theta0 (1 - theta0))) with
    q~ the restricted MLE; it is McNemar's z at theta0 = 0.
    """
    if alternative not in ("greater", "less"):
        raise ValueError(f"paired_proportion_test is one-sided: alternative {alternative!r}")
    u, v, n = first_only, second_only, n_pairs
    if n <= 0 or u < 0 or v < 0 or u + v > n:
        raise ValueError(f"paired_proportion_test: counts {u}, {v} do not fit {n} pairs")
    estimate = (u - v) / n
    if theta0 == 0:
        discordant = u + v
        k = u if alternative == "greater" else v
        if discordant == 0:
            return HypothesisTest(METHOD_MCNEMAR_EXACT, estimate, theta0, alternative, 0.0, 1.0)
        p = float(stats.binom.sf(k - 1, discordant, 0.5))
        if mid_p:
            p -= 0.5 * float(stats.binom.pmf(k, discordant, 0.5))
        method = METHOD_MCNEMAR_MID_P if mid_p else METHOD_MCNEMAR_EXACT
        return HypothesisTest(method, estimate, theta0, alternative, float(k), p)
    q = _tango_restricted(u, v, n, theta0)
    var = n * (2 * q + theta0 * (1 - theta0))
    z = (u - v - n * theta0) / math.sqrt(var) if var > 1e-12 else 0.0
    return HypothesisTest(METHOD_TANGO, estimate, theta0, alternative, z, _p_from_z(z, alternative))


# -- 7. clustered rows (sticky routing: several rows per caller) ------------------------------------


def clustered_proportion_diff(
    successes: npt.ArrayLike,
    trials: npt.ArrayLike,
    clusters: Sequence[object] | npt.ArrayLike,
    arm: npt.ArrayLike,
    theta0: float = 0.0,
    alternative: Alternative = "two-sided",
) -> HypothesisTest:
    """z-test of p_arm1 - p_arm0 with a cluster-robust variance (Liang & Zeger 1986 sandwich with the
    CR1 small-sample factor G / (G - 1)).

    One entry per row (or per group of rows): ``successes`` out of ``trials``, the ``clusters`` id
    (the caller) and ``arm`` (True/1 for the first arm, the challenger). Each rate is a ratio
    estimator; its influence is summed per cluster before squaring, so rows of one caller that move
    together count once. A caller seen in both arms is handled too (its two contributions are
    summed with opposite signs). Normal reference: with fewer than ~40 clusters it is liberal.
    """
    _check_alternative(alternative)
    y = np.asarray(successes, dtype=float).ravel()
    t = np.asarray(trials, dtype=float).ravel()
    a = np.asarray(arm).astype(bool).ravel()
    _, g = np.unique(np.asarray(clusters).ravel(), return_inverse=True)
    if not (y.size == t.size == a.size == g.size):
        raise ValueError("clustered_proportion_diff: successes, trials, clusters and arm differ in length")
    if (t <= 0).any() or (y < 0).any() or (y > t).any():
        raise ValueError("clustered_proportion_diff: every trial count must be positive and hold its successes")
    n1, n0 = t[a].sum(), t[~a].sum()
    if n1 == 0 or n0 == 0:
        raise ValueError("clustered_proportion_diff: both arms need rows")
    p1, p0 = y[a].sum() / n1, y[~a].sum() / n0
    influence = np.where(a, (y - p1 * t) / n1, -(y - p0 * t) / n0)
    per_cluster = np.bincount(g, weights=influence)
    n_clusters = per_cluster.size
    if n_clusters < 2:
        raise ValueError("clustered_proportion_diff: need at least 2 clusters")
    var = n_clusters / (n_clusters - 1) * float((per_cluster**2).sum())
    diff = p1 - p0
    z = (diff - theta0) / math.sqrt(var) if var > 1e-15 else 0.0
    return HypothesisTest(METHOD_CLUSTER, float(diff), theta0, alternative, z, _p_from_z(z, alternative))


# -- 8. tail latency -------------------------------------------------------------------------------


def tail_exceedance_test(
    challenger: npt.ArrayLike,
    champion: npt.ArrayLike,
    quantile: float = 0.95,
    *,
    max_ratio: float = 1.0,
    slack: float = 0.0,
) -> HypothesisTest:
    """One-sided test that the challenger's tail (above the ``quantile``) is slower than the
    champion's, allowing ``max_ratio`` times plus ``slack``.

    The challenger's latencies are first mapped back by the tolerance, (y - slack) / max_ratio; both
    samples are pooled and the limit is the pooled ``quantile``; the counts above it in each arm go
    to Fisher's exact test (the hypergeometric given the margins). Under H0 (the mapped challenger is
    no slower than the champion) the test is exact whatever the distributions, since it conditions on
    the limit instead of treating the champion's estimated p95 as known. Unlike Mann–Whitney, which
    tests a shift of the whole distribution, it flags p95 100 ms against 10 ms even when the medians agree.
    When no value lies strictly above the limit (ties), the values at it are counted instead.
    """
    y = (np.asarray(challenger, dtype=float).ravel() - slack) / max_ratio
    x = np.asarray(champion, dtype=float).ravel()
    if not 0 < quantile < 1 or max_ratio <= 0:
        raise ValueError(f"tail_exceedance_test: quantile in (0, 1) and max_ratio > 0, got {quantile}, {max_ratio}")
    if y.size == 0 or x.size == 0:
        raise ValueError("tail_exceedance_test: both arms need latencies")
    pooled = np.concatenate([y, x])
    limit = float(np.quantile(pooled, quantile))
    # Ties (constant or rounded latencies) can leave nothing strictly above the pooled quantile;
    # then the values at it count. Either rule is a function of the pooled sample only, so the
    # test stays exact under H0.
    if bool((pooled > limit).any()):
        k_ch, k_champ = int((y > limit).sum()), int((x > limit).sum())
    else:
        k_ch, k_champ = int((y >= limit).sum()), int((x >= limit).sum())
    total = y.size + x.size
    p = float(stats.hypergeom.sf(k_ch - 1, total, k_ch + k_champ, y.size))
    estimate = k_ch / y.size - k_champ / x.size
    return HypothesisTest(METHOD_TAIL, estimate, 0.0, "greater", float(k_ch), min(1.0, p))


# -- 9. sample sizes --------------------------------------------------------------------------------


def _n_for(p1: float, p2: float, theta0: float, z_alpha: float, z_beta: float) -> float:
    """Rows per arm (equal arms) at which the score z for H0: p1 - p2 = theta0 reaches z_alpha with
    probability power, when the true rates are p1 and p2 (Farrington & Manning 1990, eq. 6)."""
    p1t, p2t = (float(v) for v in restricted_mle(p1, 1.0, p2, 1.0, theta0))
    null_sd = math.sqrt(p1t * (1 - p1t) + p2t * (1 - p2t))
    true_sd = math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return (z_alpha * null_sd + z_beta * true_sd) ** 2 / (p1 - p2 - theta0) ** 2


def _check_design(p0: float, effect: float, alpha: float, power: float, what: str) -> None:
    if not 0 < p0 < 1:
        raise ValueError(f"{what}: baseline rate must be in (0, 1), got {p0}")
    if not 0 < effect < 1:
        raise ValueError(f"{what}: effect must be in (0, 1), got {effect}")
    if not 0 < alpha < 0.5 or not 0.5 < power < 1:
        raise ValueError(f"{what}: alpha in (0, 0.5) and power in (0.5, 1), got {alpha}, {power}")


def sample_size_two_sided(p0: float, delta: float, alpha: float, power: float) -> int:
    """Rows per arm for the two-sided pooled score test (:func:`score_z` at theta0 = 0) to detect a
    change of ``delta`` from ``p0`` with ``power`` *in either direction*: the larger of the two
    designs (p0 + delta, p0 - delta), so a drop is planned for as well as a gain. No continuity
    correction, since the test has none (p0 0.85, delta 0.05, alpha 0.05, power 0.8: 906 per arm,
    set by the drop; Fleiss's 726 was the gain with a correction)."""
    _check_design(p0, delta, alpha, power, "sample_size_two_sided")
    z_alpha, z_beta = float(stats.norm.isf(alpha / 2)), float(stats.norm.ppf(power))
    sizes = [_n_for(p1, p0, 0.0, z_alpha, z_beta) for p1 in (p0 + delta, p0 - delta) if 0 < p1 < 1]
    if not sizes:
        raise ValueError(f"sample_size_two_sided: a change of {delta} does not fit around {p0}")
    return math.ceil(round(max(sizes), 9))


def sample_size_noninferiority(
    p0: float, margin: float, alpha: float, power: float, *, higher_is_better: bool = True
) -> int:
    """Rows per arm for a rollout that must decide both ways at one-sided ``alpha``:

    - promote: the non-inferiority test (H0: challenger worse by >= ``margin``) rejects with
      ``power`` when the challenger is as good as the champion (``p0``);
    - roll back: the inferiority test (H0: challenger not worse) rejects with ``power`` when the
      challenger is worse by ``margin``.

    Both with the Farrington–Manning score test; the larger n. ``higher_is_better`` says which way
    is worse (accuracy: lower; error rate: higher).
    """
    _check_design(p0, margin, alpha, power, "sample_size_noninferiority")
    worse = p0 - margin if higher_is_better else p0 + margin
    if not 0 < worse < 1:
        raise ValueError(f"sample_size_noninferiority: a margin of {margin} does not fit below {p0}")
    sign = -1.0 if higher_is_better else 1.0
    z_alpha, z_beta = float(stats.norm.isf(alpha)), float(stats.norm.ppf(power))
    promote = _n_for(p0, p0, sign * margin, z_alpha, z_beta)
    rollback = _n_for(worse, p0, 0.0, z_alpha, z_beta)
    return math.ceil(round(max(promote, rollback), 9))


@dataclass(frozen=True)
class Baseline:
    """The champion rate an A/B design is planned for, and where it came from."""

    value: float
    source: str


def ab_baseline(configured: float | None = None, evaluated: float | None = None) -> Baseline:
    """The one rule for an A/B test's planning baseline: the configured value, else the champion's
    evaluation accuracy, else :data:`WORST_CASE_BASELINE` (0.5, the rate with the largest variance,
    so the design is never too small)."""
    for value, source in ((configured, "configured"), (evaluated, "champion evaluation")):
        if value is not None:
            if not 0 < value < 1:
                raise ValueError(f"ab_baseline: {source} baseline must be in (0, 1), got {value}")
            return Baseline(float(value), source)
    return Baseline(WORST_CASE_BASELINE, "worst case (p = 0.5)")
