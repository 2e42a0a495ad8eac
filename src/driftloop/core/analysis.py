"""The statistics behind a safe rollout: shadow, canary, A/B test and the bake after a promotion.

Every decision here compares two arms of the prediction log (the champion's answers and the
challenger's) and states its error rates:

- false rollback of an equal challenger: at most ``guard.alpha`` over the whole rollout (its
  stages and the bake, :func:`stage_alpha`), split evenly among each stage's guard tests. Tests
  looked at every poll are always-valid (mSPRT, :mod:`driftloop.core.sequential`); fixed-sample
  tests (:mod:`driftloop.core.stats`) run once per stage, at its planned look;
- false promotion of a challenger worse in accuracy by more than ``guard.max_accuracy_drop``: at
  most ``guard.alpha``. The last stage promotes only when a non-inferiority mSPRT rejects "worse by
  more than the drop"; without that evidence by its ``max_duration_s`` it withdraws the challenger.

Pure functions over a frame and numbers; reading the logs and moving aliases is the caller's job.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from driftloop.config.settings import ABSettings, BakeSettings, GuardSettings, StageSpec
from driftloop.core.sequential import MsprtState, msprt_inferiority, msprt_noninferiority
from driftloop.core.stats import (
    METHOD_TAIL,
    compare_proportions,
    farrington_manning,
    paired_proportion_test,
    sample_size_two_sided,
    tail_exceedance_test,
)
from driftloop.core.types import SLOT_SHADOW

# The sequential tests start looking once each arm has this many requests: before, the normal
# approximation behind the mixture likelihood ratio is not trusted. Looking later never costs level.
EARLY_ROLLBACK_MIN_ROWS = 30

VERDICT_OK = "ok"
VERDICT_WORSE = "worse"
VERDICT_BETTER = "better"
VERDICT_INSUFFICIENT = "insufficient"

ACTION_WAIT = "wait"
ACTION_CONTINUE = "continue"
ACTION_PROMOTE = "promote"
ACTION_ROLLBACK = "rollback"

TEST_MSPRT = "mSPRT (always valid), one-sided"
TEST_RATE = "exact unconditional or Farrington-Manning score test, one-sided"
TEST_TAIL = METHOD_TAIL
TEST_WILSON = "Wilson score interval"
TEST_PAIRED = "Tango paired score test, one-sided"
TEST_SCORE_TWO_SIDED = "Farrington-Manning score test, two-sided"

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
    # Per request (one HTTP request's texts are written together): a failed batch of 8 texts is one
    # failure, not 8 correlated ones. None for arms built by hand: then per row.
    requests: int | None = None
    failed_requests: int | None = None
    # Shadow: requests both arms answered and that carry a label, split by who got them right.
    n_paired: int = 0
    only_challenger_correct: int = 0
    only_champion_correct: int = 0

    @property
    def request_trials(self) -> tuple[int, int]:
        """(failed, all) counted per request, the units the error-rate tests use."""
        if self.requests is None or self.failed_requests is None:
            return self.errors, self.n
        return self.failed_requests, self.requests

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


def _requests(rows: pd.DataFrame) -> int:
    # The log writes one line per text; the texts of one request share its stamp, latency, slot
    # and (when failed) error, which tells the requests apart.
    keys = [c for c in ("time", "latency_ms", "slot", "model_version", "error") if c in rows.columns]
    if not len(rows) or "time" not in keys:
        return len(rows)
    return int(rows[keys].astype(str).drop_duplicates().shape[0])


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

    n_compared = agreed = n_paired = only_ch = only_champ = 0
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
        paired = both & _has_label(ok)
        if paired.any():
            label = ok.loc[paired, "label"].astype(str)
            mine_right = ok.loc[paired, "intent"].astype(str) == label
            theirs_right = theirs[paired].astype(str) == label
            n_paired = int(paired.sum())
            only_ch = int((mine_right & ~theirs_right).sum())
            only_champ = int((~mine_right & theirs_right).sum())

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
        requests=_requests(rows),
        failed_requests=_requests(rows[failed]),
        n_paired=n_paired,
        only_challenger_correct=only_ch,
        only_champion_correct=only_champ,
    )


# -- tests ------------------------------------------------------------------------------------------


def two_proportion_ztest(
    x1: float, n1: float, x2: float, n2: float, alternative: str = "two-sided"
) -> tuple[float, float]:
    """Pooled two-proportion z-test of x1/n1 against x2/n2; returns (z, p).

    ``alternative`` is "larger" (the first rate is higher), "smaller" or "two-sided". When the
    pooled rate is 0 or 1 both rates are equal and have no variance: z is 0 and p follows from it
    (0.5 one-sided, 1 two-sided), not NaN. The rollout's decisions use :mod:`driftloop.core.stats`
    (exact or score tests) and :mod:`driftloop.core.sequential`; this stays for quick looks.
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
    """Rows per arm of an A/B test: :func:`driftloop.core.stats.sample_size_two_sided`, a change of
    ``min_detectable_effect`` from ``p_baseline`` in *either* direction (the larger design), for
    the two-sided score test the A/B decision runs, without a continuity correction it lacks."""
    return sample_size_two_sided(p_baseline, min_detectable_effect, alpha, power)


@dataclass(frozen=True)
class TestResult:
    """One metric of the challenger against the champion, with the test that judged it.

    ``alpha`` is the level this test was run at (its share of the stage's rate); a sequential test
    also carries its evidence so far (``log_lr``) and the ``boundary`` (log 1/alpha) it must cross.
    """

    __test__ = False  # a result type, not a pytest test class

    metric: str
    test: str
    champion: float | None
    challenger: float | None
    statistic: float | None
    p_value: float | None
    verdict: str
    detail: str
    alpha: float | None = None
    log_lr: float | None = None
    boundary: float | None = None


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p < 0.0001 else f"{p:.4f}"


def _insufficient(metric: str, test: str, champion: float | None, challenger: float | None, why: str) -> TestResult:
    return TestResult(metric, test, champion, challenger, None, None, VERDICT_INSUFFICIENT, why)


# -- the evidence a stage keeps between polls --------------------------------------------------------


@dataclass(frozen=True)
class GuardState:
    """One stage's evidence between polls.

    Three always-valid tests (:class:`~driftloop.core.sequential.MsprtState`), updated with the
    cumulative counts at every poll: "the error rate is worse by more than its tolerance" and
    "accuracy is worse by more than the allowed drop" (either rolls back), and "accuracy is *not*
    worse by more than the allowed drop" (non-inferiority: the last stage promotes only once it
    rejects). ``planned`` holds the fixed-sample tests, run once when the stage has its
    ``min_samples`` (a second look would spend their level again).

    A restart loses nothing that matters: the mSPRT's rejection rule "the likelihood ratio at the
    cumulative counts crosses 1/alpha" holds at every look, so a fresh state fed the cumulative
    counts decides the same; only the running minimum p-value shown in reports starts over.
    """

    error_worse: MsprtState
    accuracy_worse: MsprtState
    accuracy_not_worse: MsprtState
    planned: tuple[TestResult, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_worse": self.error_worse.to_dict(),
            "accuracy_worse": self.accuracy_worse.to_dict(),
            "accuracy_not_worse": self.accuracy_not_worse.to_dict(),
            "planned": None if self.planned is None else [asdict(t) for t in self.planned],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardState:
        planned = data.get("planned")
        return cls(
            error_worse=MsprtState.from_dict(data["error_worse"]),
            accuracy_worse=MsprtState.from_dict(data["accuracy_worse"]),
            accuracy_not_worse=MsprtState.from_dict(data["accuracy_not_worse"]),
            planned=None if planned is None else tuple(TestResult(**t) for t in planned),
        )


# The mixing spread of the mSPRTs: near the difference that matters, never below these (a spread of
# a tenth of a percent would only detect what no rollout could wait for). Costs power, never level.
MIN_TAU_ERROR_RATE = 0.05
MIN_TAU_ACCURACY = 0.05


def guard_tests(kind: str) -> int:
    """How many guard tests a stage of ``kind`` (shadow, canary, bake, ab) runs; the stage's alpha is
    split evenly among them (Bonferroni: valid however they are correlated)."""
    if kind == "ab":
        return 3  # error rate (sequential and planned), p95 latency
    sequential = 2  # error rate, accuracy
    planned = 3  # error rate (exact or score), p95 tail, low-confidence rate
    if kind == "shadow":
        planned += 1  # agreement; latency is not tested in shadow, the paired accuracy test is
    return sequential + planned


def stage_alpha(guard: GuardSettings, stages: int) -> float:
    """A stage's share of ``guard.alpha``: the false-rollback rate of an equal challenger is stated
    for the whole rollout, ``stages`` analysed steps plus the bake, and split evenly."""
    if stages < 0:
        raise ValueError(f"stage_alpha: stages must be >= 0, got {stages}")
    return guard.alpha / (stages + 1)


def new_guard_state(guard: GuardSettings, kind: str, alpha: float | None = None) -> GuardState:
    """A fresh stage's evidence: each rollback test at its Bonferroni share of ``alpha`` (default
    ``guard.alpha``), the non-inferiority test at ``guard.alpha`` (the false-promotion rate)."""
    level = (guard.alpha if alpha is None else alpha) / guard_tests(kind)
    drop = guard.max_accuracy_drop
    return GuardState(
        error_worse=msprt_inferiority(
            level,
            tolerance=guard.max_error_rate_increase,
            tau=max(guard.max_error_rate_increase, MIN_TAU_ERROR_RATE),
            higher_is_better=False,
        ),
        accuracy_worse=msprt_inferiority(level, tolerance=drop, tau=max(drop, MIN_TAU_ACCURACY)),
        accuracy_not_worse=msprt_noninferiority(max(drop, 1e-6), guard.alpha, tau=max(drop, MIN_TAU_ACCURACY)),
    )


def _update(state: MsprtState, x1: int, n1: int, x2: int, n2: int) -> MsprtState:
    if state.n1 > n1 or state.n2 > n2 or state.x1 > x1 or state.x2 > x2:
        # A window that lost rows (a re-read after compaction): the counts are cumulative, so a
        # fresh state at the new counts decides the same (see GuardState).
        state = replace(state, p_value=1.0, looks=0, x1=0, n1=0, x2=0, n2=0, log_lr=float("-inf"))
    return state.update(x1, n1, x2, n2)


def update_guard_state(state: GuardState, champion: ArmStats, challenger: ArmStats, guard: GuardSettings) -> GuardState:
    """Feed one poll's cumulative counts to the stage's sequential tests. The error rate is looked at
    from :data:`EARLY_ROLLBACK_MIN_ROWS` requests per arm, accuracy from ``guard.min_labelled``
    labels per arm: earlier the normal approximation behind the mixture is not trusted (looking
    later never costs level)."""
    f1, t1 = challenger.request_trials
    f0, t0 = champion.request_trials
    error = state.error_worse
    if min(t0, t1) >= EARLY_ROLLBACK_MIN_ROWS:
        error = _update(error, f1, t1, f0, t0)
    worse, not_worse = state.accuracy_worse, state.accuracy_not_worse
    if min(champion.n_labelled, challenger.n_labelled) >= guard.min_labelled:
        counts = (challenger.correct, challenger.n_labelled, champion.correct, champion.n_labelled)
        worse, not_worse = _update(worse, *counts), _update(not_worse, *counts)
    return replace(state, error_worse=error, accuracy_worse=worse, accuracy_not_worse=not_worse)


def _sequential_result(
    metric: str, label: str, m: MsprtState, champion: float | None, challenger: float | None, what: str, started: bool
) -> TestResult:
    if not started:
        return TestResult(
            metric,
            TEST_MSPRT,
            champion,
            challenger,
            None,
            None,
            VERDICT_INSUFFICIENT,
            f"{label}: {what}; not looked at yet (too few rows).",
            m.alpha,
            None,
            m.boundary,
        )
    log_lr = None if m.log_lr == float("-inf") else m.log_lr
    detail = (
        f"{label} {_num(challenger)} ({m.x1}/{m.n1}) vs {_num(champion)} ({m.x2}/{m.n2}); {what}: "
        f"log LR {_num(log_lr, 2)} of boundary {m.boundary:.2f} (log 1/{m.alpha:.2g}), "
        f"always-valid p={_p(m.p_value)} after {m.looks} looks."
    )
    return TestResult(
        metric, TEST_MSPRT, champion, challenger, log_lr, m.p_value, VERDICT_OK, detail, m.alpha, log_lr, m.boundary
    )


def sequential_results(state: GuardState, champion: ArmStats, challenger: ArmStats) -> tuple[TestResult, ...]:
    """The stage's sequential tests as results: verdict "worse" when a rollback test crossed its
    boundary; the non-inferiority test's verdict is "ok" once it crossed (shown, not a guard)."""
    e, w, nw = state.error_worse, state.accuracy_worse, state.accuracy_not_worse
    f1, t1 = challenger.request_trials
    f0, t0 = champion.request_trials
    error = _sequential_result(
        "error_rate",
        "error rate per request",
        e,
        f0 / t0 if t0 else None,
        f1 / t1 if t1 else None,
        f"worse if more than {e.theta0:.3f} higher",
        e.looks > 0,
    )
    if e.rejected:
        error = replace(error, verdict=VERDICT_WORSE)
    acc_worse = _sequential_result(
        "accuracy",
        "accuracy",
        w,
        champion.accuracy,
        challenger.accuracy,
        f"worse if more than {-w.theta0:.3f} lower",
        w.looks > 0,
    )
    if w.rejected:
        acc_worse = replace(acc_worse, verdict=VERDICT_WORSE)
    shown = _sequential_result(
        "accuracy_noninferior",
        "accuracy",
        nw,
        champion.accuracy,
        challenger.accuracy,
        f"non-inferior once shown not more than {-nw.theta0:.3f} lower",
        nw.looks > 0,
    )
    shown = replace(shown, verdict=VERDICT_OK if nw.rejected else VERDICT_INSUFFICIENT)
    return error, acc_worse, shown


# -- the planned look: fixed-sample tests, once per stage ----------------------------------------------


def _rate_test(
    metric: str, label: str, x_ch: int, n_ch: int, x_champ: int, n_champ: int, tolerance: float, alpha: float
) -> TestResult:
    """H0: rate_challenger - rate_champion <= tolerance, by :func:`compare_proportions` (exact
    unconditional when the events are rare, Farrington–Manning otherwise)."""
    if n_ch == 0 or n_champ == 0:
        return _insufficient(
            metric,
            TEST_RATE,
            x_champ / n_champ if n_champ else None,
            x_ch / n_ch if n_ch else None,
            f"{label} not tested: champion has {n_champ} rows, challenger {n_ch}.",
        )
    rate_ch, rate_champ = x_ch / n_ch, x_champ / n_champ
    result = compare_proportions(x_ch, n_ch, x_champ, n_champ, theta0=tolerance, alternative="greater")
    verdict = VERDICT_WORSE if result.rejects(alpha) else VERDICT_OK
    detail = (
        f"challenger {label} {rate_ch:.3f} ({x_ch}/{n_ch}) vs champion {rate_champ:.3f} "
        f"({x_champ}/{n_champ}); worse only if more than {tolerance:.3f} higher, "
        f"p={_p(result.p_value)} at alpha {alpha:.2g} ({result.method})."
    )
    return TestResult(
        metric, result.method, rate_champ, rate_ch, result.statistic, result.p_value, verdict, detail, alpha
    )


def _latency_test(champion: ArmStats, challenger: ArmStats, guard: GuardSettings, alpha: float) -> TestResult:
    metric = "p95_latency_ms"
    p95_ch, p95_champ = challenger.p95_ms, champion.p95_ms
    if p95_champ is None or p95_ch is None:  # None exactly when an arm has no latencies
        return _insufficient(
            metric,
            TEST_TAIL,
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
            TEST_TAIL,
            p95_champ,
            p95_ch,
            "latency not tested in shadow: shadow answers are timed in a background "
            "thread; canary stages judge latency.",
        )
    result = tail_exceedance_test(
        challenger.latencies_ms,
        champion.latencies_ms,
        0.95,
        max_ratio=guard.max_p95_ratio,
        slack=guard.latency_slack_ms,
    )
    verdict = VERDICT_WORSE if result.rejects(alpha) else VERDICT_OK
    limit = p95_champ * guard.max_p95_ratio + guard.latency_slack_ms
    detail = (
        f"challenger p95 {p95_ch:.1f} ms vs champion {p95_champ:.1f} ms; worse when more of the "
        f"challenger's requests (mapped back by x{guard.max_p95_ratio} + {guard.latency_slack_ms} ms, "
        f"i.e. a p95 above about {limit:.1f} ms) than the champion's lie above the pooled p95: "
        f"p={_p(result.p_value)} at alpha {alpha:.2g}."
    )
    return TestResult(metric, TEST_TAIL, p95_champ, p95_ch, result.statistic, result.p_value, verdict, detail, alpha)


def _agreement_test(challenger: ArmStats, guard: GuardSettings, alpha: float) -> TestResult:
    x, n, floor = challenger.agreed, challenger.n_compared, guard.min_agreement
    rate = x / n
    # One-sided at alpha: the upper end of the two-sided (1 - 2 alpha) interval. The Wilson
    # interval inverts the score test, so the p-value below agrees with the bound. Agreement is
    # paired by construction: both answers to the same request id.
    upper = wilson_interval(x, n, min(2 * alpha, 0.999))[1]
    if 0 < floor < 1:
        z: float | None = (rate - floor) / math.sqrt(floor * (1 - floor) / n)
        p = float(stats.norm.cdf(z))
    else:
        z = None
        p = 0.0 if floor >= 1 and x < n else 1.0
    verdict = VERDICT_WORSE if upper < floor else VERDICT_OK
    detail = (
        f"challenger gave the champion's answer on {x}/{n} requests ({rate:.3f}); worse only "
        f"if the Wilson upper bound {upper:.3f} (alpha {alpha:.2g}) is below the minimum {floor:.3f}."
    )
    return TestResult("agreement", TEST_WILSON, None, rate, z, p, verdict, detail, alpha)


def _paired_accuracy_test(challenger: ArmStats, guard: GuardSettings, alpha: float) -> TestResult:
    """Shadow: both answers to the same labelled requests. Only the discordant pairs carry the
    difference (Tango's score test with the allowed drop as margin)."""
    metric = "accuracy_paired"
    u, v, n = challenger.only_challenger_correct, challenger.only_champion_correct, challenger.n_paired
    if n < guard.min_labelled:
        return _insufficient(
            metric,
            TEST_PAIRED,
            None,
            None,
            f"paired accuracy not tested: {n} labelled requests answered by both, need {guard.min_labelled}.",
        )
    result = paired_proportion_test(u, v, n, theta0=-guard.max_accuracy_drop, alternative="less")
    verdict = VERDICT_WORSE if result.rejects(alpha) else VERDICT_OK
    detail = (
        f"on {n} labelled requests both answered: only the challenger right on {u}, only the champion "
        f"on {v} (difference {result.estimate:+.3f}); worse only if more than {guard.max_accuracy_drop:.3f} "
        f"lower, p={_p(result.p_value)} at alpha {alpha:.2g} ({result.method})."
    )
    return TestResult(
        metric, result.method, None, result.estimate, result.statistic, result.p_value, verdict, detail, alpha
    )


def planned_tests(
    champion: ArmStats, challenger: ArmStats, guard: GuardSettings, alpha: float
) -> tuple[TestResult, ...]:
    """The fixed-sample guard tests, each at ``alpha`` (already a Bonferroni share), run once at a
    stage's planned look: error rate per request, p95 latency, low-confidence rate, and in shadow
    agreement and paired accuracy."""
    f1, t1 = challenger.request_trials
    f0, t0 = champion.request_trials
    results = [
        _rate_test("error_rate", "error rate per request", f1, t1, f0, t0, guard.max_error_rate_increase, alpha),
        _latency_test(champion, challenger, guard, alpha),
        _rate_test(
            "low_confidence_rate",
            "low-confidence rate",
            challenger.low_confidence,
            challenger.successes,
            champion.low_confidence,
            champion.successes,
            guard.max_low_confidence_increase,
            alpha,
        ),
    ]
    if challenger.n_compared > 0:
        results.append(_agreement_test(challenger, guard, alpha))
    if challenger.slot == SLOT_SHADOW:
        results.append(_paired_accuracy_test(challenger, guard, alpha))
    return tuple(results)


def compare_arms(
    champion: ArmStats, challenger: ArmStats, guard: GuardSettings, alpha: float | None = None
) -> tuple[TestResult, ...]:
    """Every guard test of the challenger against the champion at one look (``driftloop rollout
    status``, a one-off judgement): the planned tests and the sequential ones at the current counts,
    each at its Bonferroni share of ``alpha`` (default ``guard.alpha``)."""
    kind = "shadow" if challenger.slot == SLOT_SHADOW else "canary"
    state = update_guard_state(new_guard_state(guard, kind, alpha), champion, challenger, guard)
    level = (guard.alpha if alpha is None else alpha) / guard_tests(kind)
    return (*planned_tests(champion, challenger, guard, level), *sequential_results(state, champion, challenger))


# -- decisions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageDecision:
    """What to do with the challenger after looking at one stage's evidence.

    ``action`` is "wait" (too little data yet), "continue" (on to the next stage, or, after a
    promotion, the new champion stays), "promote" or "rollback". ``state`` is the stage's evidence
    to pass to the next poll's decision.
    """

    action: str
    reason: str
    stage: str
    tests: tuple[TestResult, ...]
    champion: ArmStats
    challenger: ArmStats
    elapsed_s: float
    sample_size: int | None = None
    state: GuardState | None = None


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} ms" if metric.endswith("_ms") else f"{value:.3f}"


def _failure(test: TestResult, challenger: ArmStats) -> str:
    """One failed test as a clause of a reason: the metric, both values, the test and its p."""
    level = "–" if test.alpha is None else f"{test.alpha:.2g}"
    if test.metric == "agreement":
        upper = wilson_interval(challenger.agreed, challenger.n_compared, min(2 * (test.alpha or 0.05), 0.999))[1]
        return (
            f"agreement {_fmt(test.metric, test.challenger)} on {challenger.n_compared} compared "
            f"requests ({test.test}, upper bound {upper:.3f}, p={_p(test.p_value)} at alpha {level})"
        )
    if test.log_lr is not None:
        return (
            f"{test.metric} {_fmt(test.metric, test.challenger)} vs {_fmt(test.metric, test.champion)} "
            f"({test.test}, log LR {test.log_lr:.2f} >= boundary {test.boundary:.2f}, p={_p(test.p_value)})"
        )
    return (
        f"{test.metric} {_fmt(test.metric, test.challenger)} vs {_fmt(test.metric, test.champion)} "
        f"({test.test}, p={_p(test.p_value)} < {level})"
    )


def _worse(tests: tuple[TestResult, ...]) -> list[TestResult]:
    return [t for t in tests if t.verdict == VERDICT_WORSE]


def _look(
    champion: ArmStats,
    challenger: ArmStats,
    guard: GuardSettings,
    kind: str,
    state: GuardState | None,
    alpha: float | None,
    planned_due: bool,
) -> tuple[GuardState, tuple[TestResult, ...]]:
    """One poll: update the sequential tests, run the planned ones once when due; all results."""
    state = update_guard_state(state or new_guard_state(guard, kind, alpha), champion, challenger, guard)
    if planned_due and state.planned is None:
        state = replace(state, planned=planned_tests(champion, challenger, guard, state.error_worse.alpha))
    return state, (*(state.planned or ()), *sequential_results(state, champion, challenger))


def decide_stage(
    champion: ArmStats,
    challenger: ArmStats,
    stage: StageSpec,
    guard: GuardSettings,
    elapsed_s: float,
    is_last: bool,
    *,
    state: GuardState | None = None,
    alpha: float | None = None,
) -> StageDecision:
    """One poll of a shadow or canary stage; pass the previous decision's ``state`` back in.

    - rollback at any poll when a sequential test (mSPRT: error rate, accuracy) crosses its boundary,
      or when a planned test fails at the planned look (the first poll with ``min_samples`` per arm);
    - a stage that is not the last continues after a clean planned look;
    - the last stage promotes only once the non-inferiority test has rejected "accuracy worse by
      more than ``guard.max_accuracy_drop``" (the burden of proof is on the challenger); it waits
      for that evidence until ``max_duration_s`` and then withdraws the challenger;
    - a stage without its samples by ``max_duration_s`` withdraws the challenger too.

    ``alpha`` is this stage's share of the rollout's false-rollback rate (:func:`stage_alpha`;
    default all of ``guard.alpha``), split evenly among its guard tests.
    """
    n = min(champion.n, challenger.n)
    kind = "shadow" if stage.kind == "shadow" else "canary"
    state, tests = _look(champion, challenger, guard, kind, state, alpha, n >= stage.min_samples)

    def decision(action: str, reason: str) -> StageDecision:
        return StageDecision(action, reason, stage.name, tests, champion, challenger, elapsed_s, state=state)

    worse = _worse(tests)
    if worse:
        return decision(
            ACTION_ROLLBACK,
            f"rollback at {stage.name}: " + "; ".join(_failure(t, challenger) for t in worse) + ".",
        )
    counts = f"champion n={champion.n}, challenger n={challenger.n}"
    ni = state.accuracy_not_worse
    if state.planned is not None:
        if not is_last:
            return decision(
                ACTION_CONTINUE,
                f"{stage.name} passed: {counts} (need {stage.min_samples} each) and no metric worse; "
                "continue to the next stage.",
            )
        evidence = (
            f"accuracy {_num(challenger.accuracy)} vs {_num(champion.accuracy)} on "
            f"{challenger.n_labelled}/{champion.n_labelled} labels, log LR {_num(_finite(ni.log_lr), 2)} "
            f"of boundary {ni.boundary:.2f}, p={_p(ni.p_value)} at alpha {ni.alpha}"
        )
        if ni.rejected:
            return decision(
                ACTION_PROMOTE,
                f"{stage.name} passed: {counts}, no metric worse, and accuracy shown not more than "
                f"{guard.max_accuracy_drop:.3f} lower ({TEST_MSPRT}: {evidence}); promote.",
            )
        if elapsed_s >= stage.max_duration_s:
            return decision(
                ACTION_ROLLBACK,
                f"rollback at {stage.name}: not shown non-inferior in max duration "
                f"({elapsed_s:.0f}s of {stage.max_duration_s:.0f}s): {evidence}; the challenger must show "
                f"it is not more than {guard.max_accuracy_drop:.3f} worse before it is promoted.",
            )
        return decision(ACTION_WAIT, f"waiting at {stage.name} for non-inferiority: {evidence}.")
    if elapsed_s >= stage.max_duration_s:
        return decision(
            ACTION_ROLLBACK,
            f"rollback at {stage.name}: not enough samples in max duration: "
            f"n={n}, need {stage.min_samples} per arm after "
            f"{elapsed_s:.0f}s of {stage.max_duration_s:.0f}s.",
        )
    return decision(ACTION_WAIT, f"waiting at {stage.name}: {counts}, need {stage.min_samples} each.")


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def decide_ab(
    champion: ArmStats,
    challenger: ArmStats,
    ab: ABSettings,
    baseline_accuracy: float,
    elapsed_s: float,
    guard: GuardSettings | None = None,
    *,
    state: GuardState | None = None,
    alpha: float | None = None,
) -> StageDecision:
    """A fixed split until both arms have the planned labelled rows, then one two-sided
    Farrington–Manning score test on accuracy at ``ab.alpha`` decides.

    The plan is :func:`required_sample_size` (a change of ``ab.min_detectable_effect`` either way
    from ``baseline_accuracy``, the one baseline rule :func:`driftloop.core.stats.ab_baseline`).
    Accuracy is tested only at the planned sample size. The operational guards apply throughout:
    the error rate by mSPRT at every poll, error rate and p95 latency once at the planned look, at
    their share of ``alpha`` (default ``guard.alpha``).
    """
    guard = guard or GuardSettings()
    planned = required_sample_size(baseline_accuracy, ab.min_detectable_effect, ab.alpha, ab.power)
    labelled = min(champion.n_labelled, challenger.n_labelled)
    state = update_guard_state(state or new_guard_state(guard, "ab", alpha), champion, challenger, guard)
    if labelled >= planned and state.planned is None:
        level = state.error_worse.alpha
        f1, t1 = challenger.request_trials
        f0, t0 = champion.request_trials
        state = replace(
            state,
            planned=(
                _rate_test(
                    "error_rate", "error rate per request", f1, t1, f0, t0, guard.max_error_rate_increase, level
                ),
                _latency_test(champion, challenger, guard, level),
            ),
        )
    guards = (*(state.planned or ()), sequential_results(state, champion, challenger)[0])

    def decision(action: str, reason: str, accuracy: TestResult) -> StageDecision:
        return StageDecision(
            action,
            reason,
            "ab",
            (*guards, accuracy),
            champion,
            challenger,
            elapsed_s,
            sample_size=planned,
            state=state,
        )

    acc_ch, acc_champ = challenger.accuracy, champion.accuracy
    if labelled < planned or acc_ch is None or acc_champ is None:
        accuracy = _insufficient(
            "accuracy",
            TEST_SCORE_TWO_SIDED,
            champion.accuracy,
            challenger.accuracy,
            f"accuracy not tested yet: {champion.n_labelled} labelled champion rows "
            f"and {challenger.n_labelled} challenger rows of the planned {planned} each.",
        )
    else:
        result = farrington_manning(
            challenger.correct, challenger.n_labelled, champion.correct, champion.n_labelled, 0.0, "two-sided"
        )
        if result.rejects(ab.alpha):  # noqa: SIM108  two questions (significant? which way?) read better apart
            verdict = VERDICT_BETTER if acc_ch > acc_champ else VERDICT_WORSE
        else:
            verdict = VERDICT_OK
        accuracy = TestResult(
            "accuracy",
            TEST_SCORE_TWO_SIDED,
            acc_champ,
            acc_ch,
            result.statistic,
            result.p_value,
            verdict,
            f"challenger accuracy {acc_ch:.3f} ({challenger.correct}/{challenger.n_labelled}) "
            f"vs champion {acc_champ:.3f} ({champion.correct}/{champion.n_labelled}), "
            f"p={_p(result.p_value)} at alpha {ab.alpha}.",
            ab.alpha,
        )

    worse = _worse(guards)
    if worse:
        return decision(
            ACTION_ROLLBACK,
            "rollback at ab: " + "; ".join(_failure(t, challenger) for t in worse) + ".",
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
        f"{champion.n_labelled} labelled rows ({TEST_SCORE_TWO_SIDED}, p={_p(accuracy.p_value)}"
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
    baseline: ArmStats,
    current: ArmStats,
    bake: BakeSettings,
    guard: GuardSettings,
    elapsed_s: float,
    *,
    state: GuardState | None = None,
    alpha: float | None = None,
) -> StageDecision:
    """After a promotion: the new champion (``current``) against the previous one's ``baseline``.

    "rollback" when a sequential test crosses its boundary (any poll) or a planned test fails at
    the planned look (``bake.min_samples`` rows); "continue" (the new champion stays) after a
    clean planned look, "wait" before. When the bake's time runs out with too few rows it also
    stays: too little traffic to judge is not evidence of a regression. ``alpha``: the bake's share
    of the rollout's false-rollback rate (:func:`stage_alpha`).
    """
    planned_due = current.n >= bake.min_samples
    state, tests = _look(baseline, current, guard, "bake", state, alpha, planned_due)

    def decision(action: str, reason: str) -> StageDecision:
        return StageDecision(action, reason, "bake", tests, baseline, current, elapsed_s, state=state)

    # The non-inferiority test is about promoting; after a promotion it is shown, never required.
    worse = _worse(tests)
    if worse:
        return decision(
            ACTION_ROLLBACK,
            f"rollback after promotion: version {current.version} regresses "
            f"against {baseline.version}: " + "; ".join(_failure(t, current) for t in worse) + ".",
        )
    if state.planned is not None:
        return decision(
            ACTION_CONTINUE,
            f"version {current.version} stays: n={current.n} "
            f"(need {bake.min_samples}) and no metric worse than {baseline.version}'s.",
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
    """The decision as a Prefect markdown artifact: verdict, both arms, every test with its p-value
    and level, the sequential tests' evidence so far (log likelihood ratio) against their boundary
    (log 1/alpha), the reason."""
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
        "| metric | test | champion | challenger | statistic | p | alpha | log LR | boundary | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in decision.tests:
        lines.append(
            f"| {t.metric} | {t.test} | {_fmt(t.metric, t.champion)} | "
            f"{_fmt(t.metric, t.challenger)} | {_num(t.statistic, 2)} | {_p(t.p_value)} | "
            f"{'–' if t.alpha is None else f'{t.alpha:.2g}'} | {_num(t.log_lr, 2)} | "
            f"{_num(t.boundary, 2)} | {t.verdict} |"
        )
    lines += [
        "",
        "Sequential tests (mSPRT) may be read at every poll: one crosses when its log LR reaches its "
        "boundary log(1/alpha). Fixed-sample tests run once, at the stage's planned look.",
        "",
        f"**Reason:** {_cell(decision.reason)}",
        "",
    ]
    return "\n".join(lines)
