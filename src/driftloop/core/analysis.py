"""The statistics behind a safe rollout: shadow, canary, A/B test and the bake after a promotion.

Every decision here compares two arms of the prediction log (the champion's answers and the
challenger's) and withdraws the challenger only when the data show it is worse by more than a
tolerance at a stated level, never on one noisy number. Pure functions over a frame and numbers;
reading the logs and moving aliases is the caller's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from scipy import stats

from driftloop.config.settings import ABSettings, BakeSettings, GuardSettings, StageSpec
from driftloop.core.types import SLOT_SHADOW

# A test that comes out significant on a handful of rows is more often a fluke of the first
# requests (a cold cache, one odd caller) than a real regression: before a stage has its
# min_samples, a "worse" verdict rolls back only once each arm has at least this many rows.
EARLY_ROLLBACK_MIN_ROWS = 30

VERDICT_OK = "ok"
VERDICT_WORSE = "worse"
VERDICT_BETTER = "better"
VERDICT_INSUFFICIENT = "insufficient"

ACTION_WAIT = "wait"
ACTION_CONTINUE = "continue"
ACTION_PROMOTE = "promote"
ACTION_ROLLBACK = "rollback"

TEST_Z_ONE_SIDED = "two-proportion z-test, one-sided"
TEST_Z_TWO_SIDED = "two-proportion z-test, two-sided"
TEST_MANN_WHITNEY = "Mann-Whitney U, one-sided"
TEST_WILSON = "Wilson score interval"

# Guard metrics that also apply during an A/B test: operational failures. The quality proxies
# are left out there because the A/B test measures accuracy itself, at its planned sample size.
_AB_GUARD_METRICS = ("error_rate", "p95_latency_ms")


# -- arms -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmStats:
    """What one model version answered in one slot of the prediction log.

    Rates of predictions that succeeded (low confidence, accuracy) are shares of the successful
    rows, since a failed prediction has no confidence or intent; the error rate is a share of all.
    """

    version: str
    slot: str
    n: int
    errors: int
    latencies_ms: tuple[float, ...]
    low_confidence: int
    n_labelled: int
    correct: int
    n_compared: int = 0
    agreed: int = 0

    @property
    def successes(self) -> int:
        return self.n - self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.n if self.n else 0.0

    @property
    def low_confidence_rate(self) -> float:
        return self.low_confidence / self.successes if self.successes else 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n_labelled if self.n_labelled else None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.n_compared if self.n_compared else None

    @property
    def p95_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else None

    @property
    def p50_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 50)) if self.latencies_ms else None


def _utc(value: datetime | pd.Timestamp) -> pd.Timestamp:
    # Naive means UTC, as everywhere in the prediction log.
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _failed(frame: pd.DataFrame) -> pd.Series:
    if "error" not in frame.columns:
        # Logs written before errors were recorded hold successful predictions only.
        return pd.Series(False, index=frame.index)
    return frame["error"].fillna("").astype(str).str.len() > 0


def _has_label(frame: pd.DataFrame) -> pd.Series:
    if "label" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["label"].notna() & (frame["label"].astype(str) != "")


def arm_stats(
    frame: pd.DataFrame,
    version: str,
    slot: str,
    low_confidence: float,
    *,
    since: datetime | pd.Timestamp | None = None,
    until: datetime | pd.Timestamp | None = None,
    last: int | None = None,
    compare_with: pd.DataFrame | None = None,
) -> ArmStats:
    """Summarise the rows of ``version`` answered in ``slot``.

    ``since`` is inclusive and ``until`` exclusive, so consecutive windows never count a row
    twice; ``last`` then keeps only the newest that-many rows. ``compare_with`` holds the answers
    the agreement is measured against (the champion's), joined on ``request_id``: only requests
    that succeeded on both sides are compared, because an error is not an answer (errors have
    their own test).
    """
    rows = frame[(frame["model_version"].astype(str) == str(version)) & (frame["slot"] == slot)]
    if since is not None:
        rows = rows[rows["time"] >= _utc(since)]
    if until is not None:
        rows = rows[rows["time"] < _utc(until)]
    if last is not None:
        rows = rows.sort_values("time", kind="stable").tail(max(last, 0))

    failed = _failed(rows)
    ok = rows[~failed]
    latencies = pd.to_numeric(ok["latency_ms"], errors="coerce").dropna()
    low = int((pd.to_numeric(ok["confidence"], errors="coerce") < low_confidence).sum())
    labelled = ok[_has_label(ok)]
    correct = int((labelled["intent"].astype(str) == labelled["label"].astype(str)).sum())

    n_compared = agreed = 0
    if compare_with is not None and len(ok):
        reference = compare_with[~_failed(compare_with)]
        # One answer per request on the reference side; the newest wins if a request repeats.
        if "time" in reference.columns:
            reference = reference.sort_values("time", kind="stable")
        answers = reference.drop_duplicates("request_id", keep="last").set_index("request_id")["intent"]
        theirs = ok["request_id"].map(answers)
        both = theirs.notna() & ok["intent"].notna()
        n_compared = int(both.sum())
        agreed = int((ok.loc[both, "intent"].astype(str) == theirs[both].astype(str)).sum())

    return ArmStats(
        version=str(version),
        slot=slot,
        n=len(rows),
        errors=int(failed.sum()),
        latencies_ms=tuple(float(v) for v in latencies),
        low_confidence=low,
        n_labelled=len(labelled),
        correct=correct,
        n_compared=n_compared,
        agreed=agreed,
    )


# -- tests ------------------------------------------------------------------------------------------


def two_proportion_ztest(
    x1: float, n1: float, x2: float, n2: float, alternative: str = "two-sided"
) -> tuple[float, float]:
    """Pooled two-proportion z-test of x1/n1 against x2/n2; returns (z, p).

    ``alternative`` is "larger" (the first rate is higher), "smaller" or "two-sided". Counts may
    be fractional (a rate shifted by a tolerance). When the pooled rate is 0 or 1 both rates are
    equal and have no variance: z is 0 and p follows from it (0.5 one-sided, 1 two-sided), not NaN.
    """
    if alternative not in ("larger", "smaller", "two-sided"):
        raise ValueError(f"alternative {alternative!r}: expected 'larger', 'smaller' or 'two-sided'")
    for x, n in ((x1, n1), (x2, n2)):
        if n <= 0:
            raise ValueError(f"two_proportion_ztest: n must be positive, got {n}")
        if not -1e-9 <= x <= n + 1e-9:
            raise ValueError(f"two_proportion_ztest: count {x} is outside [0, {n}]")
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    z = (p1 - p2) / math.sqrt(variance) if variance > 1e-15 else 0.0
    if alternative == "larger":
        p = stats.norm.sf(z)
    elif alternative == "smaller":
        p = stats.norm.cdf(z)
    else:
        p = 2 * stats.norm.sf(abs(z))
    return float(z), float(min(p, 1.0))


def wilson_interval(x: float, n: float, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - alpha) Wilson score interval for the proportion x/n.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at x = 0 or x = n.
    """
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be positive, got {n}")
    if not 0 <= x <= n:
        raise ValueError(f"wilson_interval: count {x} is outside [0, {n}]")
    if not 0 < alpha < 1:
        raise ValueError(f"wilson_interval: alpha must be between 0 and 1, got {alpha}")
    z = float(stats.norm.ppf(1 - alpha / 2))
    p = x / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def required_sample_size(p_baseline: float, min_detectable_effect: float, alpha: float, power: float) -> int:
    """Rows per arm for a two-sided two-proportion test to detect ``p_baseline`` moving by
    ``min_detectable_effect`` with the given power.

    Fleiss's formula (pooled variance under H0) with his continuity correction, rounded up: the
    textbook value (p=0.85, effect 0.05, alpha 0.05, power 0.8 gives 726). The effect is taken
    upwards (a better challenger); where that would pass 1 it is taken downwards.
    """
    if not 0 < p_baseline < 1:
        raise ValueError(f"required_sample_size: baseline rate must be between 0 and 1, got {p_baseline}")
    if not 0 < min_detectable_effect < 1:
        raise ValueError(f"required_sample_size: effect must be between 0 and 1, got {min_detectable_effect}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"required_sample_size: alpha and power must be between 0 and 1, got {alpha} and {power}")
    p1 = p_baseline
    p2 = p1 + min_detectable_effect
    if p2 > 1:
        p2 = p1 - min_detectable_effect
    if p2 < 0:
        raise ValueError(
            f"required_sample_size: an effect of {min_detectable_effect} does not fit around the baseline {p_baseline}"
        )
    delta = abs(p2 - p1)
    mean = (p1 + p2) / 2
    z_alpha = float(stats.norm.ppf(1 - alpha / 2))
    z_beta = float(stats.norm.ppf(power))
    n = (z_alpha * math.sqrt(2 * mean * (1 - mean)) + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / delta**2
    corrected = n / 4 * (1 + math.sqrt(1 + 4 / (n * delta))) ** 2
    # Round before the ceiling so float noise (725.0000000001) does not add a whole row.
    return math.ceil(round(corrected, 9))


@dataclass(frozen=True)
class TestResult:
    """One metric of the challenger against the champion, with the test that judged it."""

    __test__ = False  # a result type, not a pytest test class

    metric: str
    test: str
    champion: float | None
    challenger: float | None
    statistic: float | None
    p_value: float | None
    verdict: str
    detail: str


def _excess_test(x_ch: float, n_ch: float, x_champ: float, n_champ: float, tolerance: float) -> tuple[float, float]:
    """One-sided test of H0: rate_challenger - rate_champion <= tolerance.

    The champion's rate is shifted up by the tolerance and the pooled z-test asks whether the
    challenger's rate is larger than that. It is the simple form of a non-inferiority test: at
    the boundary of H0 the two compared rates are equal, which is what the pooled test assumes.
    """
    shifted = min(x_champ / n_champ + tolerance, 1.0)
    return two_proportion_ztest(x_ch, n_ch, shifted * n_champ, n_champ, "larger")


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p < 0.0001 else f"{p:.4f}"


def _insufficient(metric: str, test: str, champion: float | None, challenger: float | None, why: str) -> TestResult:
    return TestResult(metric, test, champion, challenger, None, None, VERDICT_INSUFFICIENT, why)


def _rate_test(
    metric: str, label: str, x_ch: int, n_ch: int, x_champ: int, n_champ: int, tolerance: float, alpha: float
) -> TestResult:
    if n_ch == 0 or n_champ == 0:
        return _insufficient(
            metric,
            TEST_Z_ONE_SIDED,
            x_champ / n_champ if n_champ else None,
            x_ch / n_ch if n_ch else None,
            f"{label} not tested: champion has {n_champ} rows, challenger {n_ch}.",
        )
    rate_ch, rate_champ = x_ch / n_ch, x_champ / n_champ
    z, p = _excess_test(x_ch, n_ch, x_champ, n_champ, tolerance)
    verdict = VERDICT_WORSE if p < alpha else VERDICT_OK
    detail = (
        f"challenger {label} {rate_ch:.3f} ({x_ch}/{n_ch}) vs champion {rate_champ:.3f} "
        f"({x_champ}/{n_champ}); worse only if more than {tolerance:.3f} higher, "
        f"p={_p(p)} at alpha {alpha}."
    )
    return TestResult(metric, TEST_Z_ONE_SIDED, rate_champ, rate_ch, z, p, verdict, detail)


def _latency_test(champion: ArmStats, challenger: ArmStats, guard: GuardSettings) -> TestResult:
    metric = "p95_latency_ms"
    p95_ch, p95_champ = challenger.p95_ms, champion.p95_ms
    if p95_champ is None or p95_ch is None:  # None exactly when an arm has no latencies
        return _insufficient(
            metric,
            TEST_MANN_WHITNEY,
            p95_champ,
            p95_ch,
            f"latency not tested: champion has {len(champion.latencies_ms)} "
            f"successful rows, challenger {len(challenger.latencies_ms)}.",
        )
    if challenger.slot == SLOT_SHADOW:
        # A shadow prediction is timed in a background thread that yields to user requests and
        # waits for the interpreter lock: its wall time is not comparable with a served answer's
        # (a measured false rollback of an equally fast model). Latency is judged in canary
        # stages, where both arms are timed the same way on the same traffic.
        return _insufficient(
            metric,
            TEST_MANN_WHITNEY,
            p95_champ,
            p95_ch,
            "latency not tested in shadow: shadow answers are timed in a background "
            "thread; canary stages judge latency.",
        )
    limit = p95_champ * guard.max_p95_ratio + guard.latency_slack_ms
    result = stats.mannwhitneyu(challenger.latencies_ms, champion.latencies_ms, alternative="greater")
    u, p = float(result.statistic), float(result.pvalue)
    if math.isnan(p):
        p = 1.0
    # Both conditions: the rank test alone flags a 1 ms shift on big samples, the p95 alone
    # flags one slow request on small ones.
    verdict = VERDICT_WORSE if p95_ch > limit and p < guard.alpha else VERDICT_OK
    detail = (
        f"challenger p95 {p95_ch:.1f} ms vs champion {p95_champ:.1f} ms; worse only above "
        f"{limit:.1f} ms (x{guard.max_p95_ratio} + {guard.latency_slack_ms} ms) with "
        f"p={_p(p)} < {guard.alpha}."
    )
    return TestResult(metric, TEST_MANN_WHITNEY, p95_champ, p95_ch, u, p, verdict, detail)


def _agreement_test(challenger: ArmStats, guard: GuardSettings) -> TestResult:
    x, n, floor = challenger.agreed, challenger.n_compared, guard.min_agreement
    rate = x / n
    # One-sided at alpha: the upper end of the two-sided (1 - 2 alpha) interval. The Wilson
    # interval inverts the score test, so the p-value below agrees with the bound.
    upper = wilson_interval(x, n, min(2 * guard.alpha, 0.999))[1]
    if 0 < floor < 1:
        z = (rate - floor) / math.sqrt(floor * (1 - floor) / n)
        p = float(stats.norm.cdf(z))
    else:
        z = None
        p = 0.0 if floor >= 1 and x < n else 1.0
    verdict = VERDICT_WORSE if upper < floor else VERDICT_OK
    detail = (
        f"challenger gave the champion's answer on {x}/{n} requests ({rate:.3f}); worse only "
        f"if the Wilson upper bound {upper:.3f} is below the minimum {floor:.3f}."
    )
    return TestResult("agreement", TEST_WILSON, None, rate, z, p, verdict, detail)


def _accuracy_test(champion: ArmStats, challenger: ArmStats, guard: GuardSettings) -> TestResult:
    metric = "accuracy"
    if min(champion.n_labelled, challenger.n_labelled) < guard.min_labelled:
        return _insufficient(
            metric,
            TEST_Z_ONE_SIDED,
            champion.accuracy,
            challenger.accuracy,
            f"accuracy not tested: {champion.n_labelled} labelled champion rows and "
            f"{challenger.n_labelled} challenger rows, need {guard.min_labelled} each.",
        )
    acc_ch, acc_champ = challenger.accuracy, champion.accuracy
    # Worse: the challenger's miss rate exceeds the champion's by more than the allowed drop.
    z, p = _excess_test(
        challenger.n_labelled - challenger.correct,
        challenger.n_labelled,
        champion.n_labelled - champion.correct,
        champion.n_labelled,
        guard.max_accuracy_drop,
    )
    z_better, p_better = two_proportion_ztest(
        challenger.correct, challenger.n_labelled, champion.correct, champion.n_labelled, "larger"
    )
    if p < guard.alpha:
        verdict = VERDICT_WORSE
    elif p_better < guard.alpha:
        verdict, z, p = VERDICT_BETTER, z_better, p_better
    else:
        verdict = VERDICT_OK
    detail = (
        f"challenger accuracy {acc_ch:.3f} ({challenger.correct}/{challenger.n_labelled}) vs "
        f"champion {acc_champ:.3f} ({champion.correct}/{champion.n_labelled}); worse only if "
        f"more than {guard.max_accuracy_drop:.3f} lower, p={_p(p)} at alpha {guard.alpha}."
    )
    return TestResult(metric, TEST_Z_ONE_SIDED, acc_champ, acc_ch, z, p, verdict, detail)


def compare_arms(champion: ArmStats, challenger: ArmStats, guard: GuardSettings) -> tuple[TestResult, ...]:
    """Every guard test of the challenger against the champion, one-sided at ``guard.alpha``.

    Always error_rate, p95_latency_ms, low_confidence_rate and accuracy (the last "insufficient"
    until both arms have ``guard.min_labelled`` labels); agreement too when the challenger was
    compared with the champion's answers (a shadow arm). "worse" means worse by more than the
    tolerance, shown by the data; "better" is only judged for accuracy.
    """
    results = [
        _rate_test(
            "error_rate",
            "error rate",
            challenger.errors,
            challenger.n,
            champion.errors,
            champion.n,
            guard.max_error_rate_increase,
            guard.alpha,
        ),
        _latency_test(champion, challenger, guard),
        _rate_test(
            "low_confidence_rate",
            "low-confidence rate",
            challenger.low_confidence,
            challenger.successes,
            champion.low_confidence,
            champion.successes,
            guard.max_low_confidence_increase,
            guard.alpha,
        ),
    ]
    if challenger.n_compared > 0:
        results.append(_agreement_test(challenger, guard))
    results.append(_accuracy_test(champion, challenger, guard))
    return tuple(results)


# -- decisions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageDecision:
    """What to do with the challenger after looking at one stage's evidence.

    ``action`` is "wait" (too little data yet), "continue" (on to the next stage, or, after a
    promotion, the new champion stays), "promote" or "rollback".
    """

    action: str
    reason: str
    stage: str
    tests: tuple[TestResult, ...]
    champion: ArmStats
    challenger: ArmStats
    elapsed_s: float
    sample_size: int | None = None


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} ms" if metric.endswith("_ms") else f"{value:.3f}"


def _failure(test: TestResult, guard: GuardSettings, challenger: ArmStats) -> str:
    """One failed test as a clause of a reason: the metric, both values, the test and its p."""
    if test.metric == "agreement":
        upper = wilson_interval(challenger.agreed, challenger.n_compared, min(2 * guard.alpha, 0.999))[1]
        return (
            f"agreement {_fmt(test.metric, test.challenger)} on {challenger.n_compared} compared "
            f"requests ({test.test}, upper bound {upper:.3f} < {guard.min_agreement:.3f}, "
            f"p={_p(test.p_value)})"
        )
    return (
        f"{test.metric} {_fmt(test.metric, test.challenger)} vs {_fmt(test.metric, test.champion)} "
        f"({test.test}, p={_p(test.p_value)} < {guard.alpha})"
    )


def _worse(tests: tuple[TestResult, ...]) -> list[TestResult]:
    return [t for t in tests if t.verdict == VERDICT_WORSE]


def decide_stage(
    champion: ArmStats, challenger: ArmStats, stage: StageSpec, guard: GuardSettings, elapsed_s: float, is_last: bool
) -> StageDecision:
    """Roll back on any significantly worse metric, move on once both arms have the stage's
    samples, roll back when the stage's time runs out first, and wait otherwise.

    A worse verdict counts before ``min_samples`` as soon as each arm has
    :data:`EARLY_ROLLBACK_MIN_ROWS` rows (or ``min_samples`` if that is smaller). In a shadow
    stage the challenger arm is the shadow slot.
    """
    tests = compare_arms(champion, challenger, guard)

    def decision(action: str, reason: str) -> StageDecision:
        return StageDecision(action, reason, stage.name, tests, champion, challenger, elapsed_s)

    n = min(champion.n, challenger.n)
    worse = _worse(tests)
    if worse and n >= min(EARLY_ROLLBACK_MIN_ROWS, stage.min_samples):
        return decision(
            ACTION_ROLLBACK,
            f"rollback at {stage.name}: " + "; ".join(_failure(t, guard, challenger) for t in worse) + ".",
        )
    counts = f"champion n={champion.n}, challenger n={challenger.n}"
    if n >= stage.min_samples:
        action = ACTION_PROMOTE if is_last else ACTION_CONTINUE
        then = "promote" if is_last else "continue to the next stage"
        return decision(
            action,
            f"{stage.name} passed: {counts} (need {stage.min_samples} each) and "
            f"no metric worse at alpha {guard.alpha}; {then}.",
        )
    if elapsed_s >= stage.max_duration_s:
        return decision(
            ACTION_ROLLBACK,
            f"rollback at {stage.name}: not enough samples in max duration: "
            f"n={n}, need {stage.min_samples} per arm after "
            f"{elapsed_s:.0f}s of {stage.max_duration_s:.0f}s.",
        )
    why = f"waiting at {stage.name}: {counts}, need {stage.min_samples} each."
    if worse:
        why += (
            f" {', '.join(t.metric for t in worse)} looks worse, but an arm has fewer than "
            f"{EARLY_ROLLBACK_MIN_ROWS} rows."
        )
    return decision(ACTION_WAIT, why)


def decide_ab(
    champion: ArmStats,
    challenger: ArmStats,
    ab: ABSettings,
    baseline_accuracy: float,
    elapsed_s: float,
    guard: GuardSettings | None = None,
) -> StageDecision:
    """A fixed split until both arms have the planned labelled rows, then one two-sided
    two-proportion z-test on accuracy decides.

    The accuracy test is run only at the planned sample size (looking earlier and stopping on
    the first significant result would inflate the error rate). The operational guards of
    ``guard`` (error rate and p95 latency; default settings when None) apply throughout and roll
    a failing challenger back early.
    """
    guard = guard or GuardSettings()
    planned = required_sample_size(baseline_accuracy, ab.min_detectable_effect, ab.alpha, ab.power)
    guards = tuple(t for t in compare_arms(champion, challenger, guard) if t.metric in _AB_GUARD_METRICS)

    def decision(action: str, reason: str, accuracy: TestResult) -> StageDecision:
        return StageDecision(
            action, reason, "ab", (*guards, accuracy), champion, challenger, elapsed_s, sample_size=planned
        )

    labelled = min(champion.n_labelled, challenger.n_labelled)
    acc_ch, acc_champ = challenger.accuracy, champion.accuracy
    # planned is at least 1, so enough labelled rows means both accuracies exist.
    if labelled < planned or acc_ch is None or acc_champ is None:
        accuracy = _insufficient(
            "accuracy",
            TEST_Z_TWO_SIDED,
            champion.accuracy,
            challenger.accuracy,
            f"accuracy not tested yet: {champion.n_labelled} labelled champion rows "
            f"and {challenger.n_labelled} challenger rows of the planned {planned} each.",
        )
    else:
        z, p = two_proportion_ztest(
            challenger.correct, challenger.n_labelled, champion.correct, champion.n_labelled, "two-sided"
        )
        if p < ab.alpha:  # noqa: SIM108  two questions (significant? which way?) read better apart
            verdict = VERDICT_BETTER if acc_ch > acc_champ else VERDICT_WORSE
        else:
            verdict = VERDICT_OK
        accuracy = TestResult(
            "accuracy",
            TEST_Z_TWO_SIDED,
            acc_champ,
            acc_ch,
            z,
            p,
            verdict,
            f"challenger accuracy {acc_ch:.3f} ({challenger.correct}/{challenger.n_labelled}) "
            f"vs champion {acc_champ:.3f} ({champion.correct}/{champion.n_labelled}), "
            f"p={_p(p)} at alpha {ab.alpha}.",
        )

    worse = _worse(guards)
    if worse and min(champion.n, challenger.n) >= EARLY_ROLLBACK_MIN_ROWS:
        return decision(
            ACTION_ROLLBACK,
            "rollback at ab: " + "; ".join(_failure(t, guard, challenger) for t in worse) + ".",
            accuracy,
        )
    if labelled < planned:
        if elapsed_s >= ab.max_duration_s:
            return decision(
                ACTION_ROLLBACK,
                f"rollback at ab: not enough labelled samples in max duration: "
                f"n={labelled}, need {planned} per arm after {elapsed_s:.0f}s "
                f"of {ab.max_duration_s:.0f}s; keeping the champion.",
                accuracy,
            )
        return decision(
            ACTION_WAIT,
            f"waiting at ab: labelled champion n={champion.n_labelled}, "
            f"challenger n={challenger.n_labelled}, need {planned} each.",
            accuracy,
        )

    summary = (
        f"accuracy {accuracy.challenger:.3f} vs {accuracy.champion:.3f} on {challenger.n_labelled} and "
        f"{champion.n_labelled} labelled rows ({TEST_Z_TWO_SIDED}, p={_p(accuracy.p_value)}"
    )
    if accuracy.verdict == VERDICT_BETTER:
        return decision(ACTION_PROMOTE, f"promote after ab: {summary} < {ab.alpha}).", accuracy)
    if accuracy.verdict == VERDICT_WORSE:
        return decision(ACTION_ROLLBACK, f"rollback at ab: {summary} < {ab.alpha}).", accuracy)
    if ab.promote_on_tie:
        return decision(
            ACTION_PROMOTE,
            f"promote after ab: no significant difference, {summary} >= {ab.alpha}); promote_on_tie is set.",
            accuracy,
        )
    return decision(
        ACTION_ROLLBACK,
        f"rollback at ab: no significant difference, {summary} >= {ab.alpha}); keeping the champion.",
        accuracy,
    )


def detect_regression(
    baseline: ArmStats, current: ArmStats, bake: BakeSettings, guard: GuardSettings, elapsed_s: float
) -> StageDecision:
    """After a promotion: the new champion (``current``) against the previous one's ``baseline``.

    "rollback" on any significantly worse metric (early, as in :func:`decide_stage`),
    "continue" (the new champion stays) once it has ``bake.min_samples`` rows without one,
    "wait" before. When the bake's time runs out with too few rows it also stays: too little
    traffic to judge is not evidence of a regression.
    """
    tests = compare_arms(baseline, current, guard)

    def decision(action: str, reason: str) -> StageDecision:
        return StageDecision(action, reason, "bake", tests, baseline, current, elapsed_s)

    worse = _worse(tests)
    if worse and min(baseline.n, current.n) >= min(EARLY_ROLLBACK_MIN_ROWS, bake.min_samples):
        return decision(
            ACTION_ROLLBACK,
            f"rollback after promotion: version {current.version} regresses "
            f"against {baseline.version}: " + "; ".join(_failure(t, guard, current) for t in worse) + ".",
        )
    if current.n >= bake.min_samples:
        return decision(
            ACTION_CONTINUE,
            f"version {current.version} stays: n={current.n} "
            f"(need {bake.min_samples}) and no metric worse than "
            f"{baseline.version}'s at alpha {guard.alpha}.",
        )
    if elapsed_s >= bake.max_duration_s:
        return decision(
            ACTION_CONTINUE,
            f"version {current.version} stays: only n={current.n} of "
            f"{bake.min_samples} rows after {elapsed_s:.0f}s, too little "
            f"traffic to judge, which is not a regression.",
        )
    return decision(ACTION_WAIT, f"baking version {current.version}: n={current.n}, need {bake.min_samples}.")


# -- report -----------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_markdown(decision: StageDecision) -> str:
    """The decision as a Prefect markdown artifact: verdict, both arms, every test, the reason."""
    lines = [
        f"## {decision.stage}: {decision.action.upper()}",
        "",
        f"After {decision.elapsed_s:.0f}s"
        + (
            f"; planned sample size {decision.sample_size} labelled rows per arm."
            if decision.sample_size is not None
            else "."
        ),
        "",
        "| arm | version | n | error rate | p50 ms | p95 ms | low-conf rate | labelled | accuracy | agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, arm in (("champion", decision.champion), ("challenger", decision.challenger)):
        lines.append(
            f"| {name} ({_cell(arm.slot)}) | {_cell(arm.version)} | {arm.n} | {arm.error_rate:.3f} | "
            f"{_num(arm.p50_ms, 1)} | {_num(arm.p95_ms, 1)} | {arm.low_confidence_rate:.3f} | "
            f"{arm.n_labelled} | {_num(arm.accuracy)} | {_num(arm.agreement)} |"
        )
    lines += [
        "",
        "| metric | test | champion | challenger | statistic | p | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for t in decision.tests:
        lines.append(
            f"| {t.metric} | {t.test} | {_fmt(t.metric, t.champion)} | "
            f"{_fmt(t.metric, t.challenger)} | {_num(t.statistic, 2)} | {_p(t.p_value)} | "
            f"{t.verdict} |"
        )
    lines += ["", f"**Reason:** {_cell(decision.reason)}", ""]
    return "\n".join(lines)
