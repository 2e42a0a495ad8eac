import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from driftloop.config.settings import ABSettings, BakeSettings, GuardSettings, StageSpec
from driftloop.core.analysis import (
    EARLY_ROLLBACK_MIN_ROWS,
    TEST_MANN_WHITNEY,
    TEST_WILSON,
    TEST_Z_ONE_SIDED,
    TEST_Z_TWO_SIDED,
    ArmStats,
    arm_stats,
    compare_arms,
    decide_ab,
    decide_stage,
    detect_regression,
    render_markdown,
    required_sample_size,
    two_proportion_ztest,
    wilson_interval,
)
from driftloop.core.types import SLOT_CANARY, SLOT_CHAMPION, SLOT_SHADOW

GUARD = GuardSettings()


def norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def arm(
    n: int,
    errors: int = 0,
    latency: float | list[float] = 10.0,
    low: int = 0,
    labelled: int = 0,
    correct: int = 0,
    compared: int = 0,
    agreed: int = 0,
    version: str = "1",
    slot: str = SLOT_CHAMPION,
) -> ArmStats:
    ok = n - errors
    latencies = tuple(latency) if isinstance(latency, list) else tuple([latency] * ok)
    return ArmStats(
        version=version,
        slot=slot,
        n=n,
        errors=errors,
        latencies_ms=latencies,
        low_confidence=low,
        n_labelled=labelled,
        correct=correct,
        n_compared=compared,
        agreed=agreed,
    )


def challenger(n: int, **kwargs) -> ArmStats:
    kwargs.setdefault("version", "2")
    kwargs.setdefault("slot", SLOT_CANARY)
    return arm(n, **kwargs)


def by_metric(tests) -> dict:
    return {t.metric: t for t in tests}


# -- two-proportion z-test ------------------------------------------------------------------------


def hand_ztest(x1, n1, x2, n2):
    pooled = (x1 + x2) / (n1 + n2)
    return (x1 / n1 - x2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2"), [(10, 100, 5, 100), (5, 100, 10, 100), (45, 300, 30, 250), (1, 30, 0, 30)]
)
@pytest.mark.parametrize("alternative", ["larger", "smaller", "two-sided"])
def test_ztest_matches_hand_computation(x1, n1, x2, n2, alternative):
    z, p = two_proportion_ztest(x1, n1, x2, n2, alternative)
    expected_z = hand_ztest(x1, n1, x2, n2)
    expected_p = {
        "larger": norm_sf(expected_z),
        "smaller": norm_sf(-expected_z),
        "two-sided": 2 * norm_sf(abs(expected_z)),
    }[alternative]
    assert z == pytest.approx(expected_z, rel=1e-9)
    assert p == pytest.approx(expected_p, rel=1e-9)


def test_ztest_known_value():
    # 10/100 vs 5/100: pooled 0.075, se = sqrt(0.075 * 0.925 * 0.02) = 0.037249
    z, p = two_proportion_ztest(10, 100, 5, 100, "larger")
    assert z == pytest.approx(1.3423, abs=1e-4)
    assert p == pytest.approx(0.0897, abs=1e-4)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(0, 50, 0, 80), (50, 50, 80, 80)])
@pytest.mark.parametrize(("alternative", "p"), [("larger", 0.5), ("smaller", 0.5), ("two-sided", 1.0)])
def test_ztest_degenerate_rates_give_no_nan(x1, n1, x2, n2, alternative, p):
    z, pval = two_proportion_ztest(x1, n1, x2, n2, alternative)
    assert z == 0.0 and pval == p


def test_ztest_extreme_but_different_rates():
    z, p = two_proportion_ztest(10, 10, 0, 10, "larger")
    assert z == pytest.approx(hand_ztest(10, 10, 0, 10)) and p < 1e-4 and not math.isnan(p)


@pytest.mark.parametrize("args", [(0, 0, 1, 10), (1, 10, 0, 0), (11, 10, 1, 10), (-1, 10, 1, 10)])
def test_ztest_rejects_impossible_counts(args):
    with pytest.raises(ValueError, match="two_proportion_ztest: "):
        two_proportion_ztest(*args)


def test_ztest_rejects_unknown_alternative():
    with pytest.raises(ValueError, match="alternative"):
        two_proportion_ztest(1, 10, 1, 10, "greater")


# -- Wilson interval --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "n", "alpha", "low", "high"),
    [
        (0, 10, 0.05, 0.0, 0.2775),
        (10, 10, 0.05, 0.7225, 1.0),
        (5, 10, 0.05, 0.2366, 0.7634),
        (81, 263, 0.05, 0.2553, 0.3662),  # Newcombe (1998), example of 81/263
        (0, 10, 0.10, 0.0, 0.2130),
    ],
)
def test_wilson_known_values(x, n, alpha, low, high):
    lo, hi = wilson_interval(x, n, alpha)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_narrows_with_more_data():
    small = wilson_interval(5, 10, 0.05)
    large = wilson_interval(500, 1000, 0.05)
    assert large[1] - large[0] < small[1] - small[0]
    assert large[0] < 0.5 < large[1]


@pytest.mark.parametrize(("x", "n", "alpha"), [(0, 0, 0.05), (11, 10, 0.05), (1, 10, 0.0), (1, 10, 1.0)])
def test_wilson_rejects_bad_input(x, n, alpha):
    with pytest.raises(ValueError, match="wilson_interval: "):
        wilson_interval(x, n, alpha)


# -- sample size ------------------------------------------------------------------------------------


def test_required_sample_size_textbook_value():
    # Fleiss with continuity correction, by hand: p1 = 0.85, p2 = 0.90, mean 0.875,
    # z(0.975) = 1.959964, z(0.8) = 0.841621.
    p1, p2, d = 0.85, 0.90, 0.05
    n = (1.959964 * math.sqrt(2 * 0.875 * 0.125) + 0.841621 * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / d**2
    corrected = n / 4 * (1 + math.sqrt(1 + 4 / (n * d))) ** 2
    assert n == pytest.approx(685.6, abs=0.1)
    assert required_sample_size(0.85, 0.05, 0.05, 0.8) == math.ceil(corrected) == 726


@pytest.mark.parametrize(
    ("changed", "direction"),
    [
        ({"min_detectable_effect": 0.10}, -1),
        ({"power": 0.9}, +1),
        ({"alpha": 0.01}, +1),
    ],
)
def test_required_sample_size_moves_the_right_way(changed, direction):
    base = {"p_baseline": 0.85, "min_detectable_effect": 0.05, "alpha": 0.05, "power": 0.8}
    delta = required_sample_size(**{**base, **changed}) - required_sample_size(**base)
    assert delta * direction > 0


def test_required_sample_size_near_one_takes_the_effect_downwards():
    # 0.97 + 0.05 passes 1: the same formula with p2 = 0.92.
    assert required_sample_size(0.97, 0.05, 0.05, 0.8) == required_sample_size(0.92, 0.05, 0.05, 0.8)


@pytest.mark.parametrize(
    "args",
    [
        (0.0, 0.05, 0.05, 0.8),
        (1.0, 0.05, 0.05, 0.8),
        (0.5, 0.0, 0.05, 0.8),
        (0.5, 0.05, 0.0, 0.8),
        (0.5, 0.05, 0.05, 1.0),
    ],
)
def test_required_sample_size_rejects_bad_input(args):
    with pytest.raises(ValueError, match="required_sample_size: "):
        required_sample_size(*args)


# -- arm_stats --------------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


def log_frame() -> pd.DataFrame:
    rows = [
        # request, second, intent, confidence, version, slot, error, latency, label
        ("r1", 1, "a", 0.9, "1", SLOT_CHAMPION, "", 10.0, "a"),
        ("r2", 2, "b", 0.3, "1", SLOT_CHAMPION, "", 20.0, "a"),
        ("r3", 3, None, np.nan, "1", SLOT_CHAMPION, "boom", 5.0, "a"),
        ("r4", 4, "c", 0.8, "1", SLOT_CHAMPION, "", 30.0, None),
        ("r5", 5, "a", 0.95, "1", SLOT_CHAMPION, "", 40.0, np.nan),
        ("r1", 1, "a", 0.7, "2", SLOT_SHADOW, "", 11.0, "a"),  # agrees with the champion
        ("r2", 2, "a", 0.4, "2", SLOT_SHADOW, "", 12.0, "a"),  # disagrees
        ("r3", 3, "a", 0.9, "2", SLOT_SHADOW, "", 13.0, "a"),  # champion failed: not compared
        ("r4", 4, None, np.nan, "2", SLOT_SHADOW, "timeout", 500.0, None),
        ("r6", 6, "a", 0.9, "2", SLOT_SHADOW, "", 14.0, None),  # no champion answer
        ("r7", 7, "a", 0.9, "2", SLOT_CANARY, "", 15.0, "b"),  # other slot
        ("r8", 8, "a", 0.9, "0", SLOT_CHAMPION, "", 16.0, "a"),  # other version
    ]
    return pd.DataFrame(
        [
            {
                "request_id": r,
                "time": T0 + timedelta(seconds=s),
                "text": f"text {r}",
                "intent": i,
                "confidence": c,
                "model_version": v,
                "slot": slot,
                "error": e,
                "latency_ms": lat,
                "tokens": 3,
                "label": lab,
            }
            for r, s, i, c, v, slot, e, lat, lab in rows
        ]
    )


def test_arm_stats_counts_errors_latency_confidence_and_labels():
    a = arm_stats(log_frame(), "1", SLOT_CHAMPION, low_confidence=0.5)
    assert (a.version, a.slot, a.n, a.errors) == ("1", SLOT_CHAMPION, 5, 1)
    assert a.latencies_ms == (10.0, 20.0, 30.0, 40.0)  # the failed row's latency is left out
    assert a.low_confidence == 1 and a.low_confidence_rate == pytest.approx(1 / 4)
    assert (a.n_labelled, a.correct, a.accuracy) == (2, 1, 0.5)  # r3 failed, r4/r5 unlabelled
    assert a.error_rate == pytest.approx(0.2)
    assert a.p50_ms == pytest.approx(25.0) and a.p95_ms == pytest.approx(38.5)
    assert (a.n_compared, a.agreement) == (0, None)


def test_arm_stats_shadow_agreement_with_champion_answers():
    frame = log_frame()
    champion_rows = frame[(frame["slot"] == SLOT_CHAMPION) & (frame["model_version"] == "1")]
    s = arm_stats(frame, "2", SLOT_SHADOW, 0.5, compare_with=champion_rows)
    assert (s.n, s.errors) == (5, 1)
    # r1 agrees, r2 disagrees; r3 (champion failed), r4 (shadow failed), r6 (no champion) are out.
    assert (s.n_compared, s.agreed, s.agreement) == (2, 1, 0.5)
    assert (s.n_labelled, s.correct) == (3, 3)


def test_arm_stats_time_bounds_are_half_open():
    frame = log_frame()
    a = arm_stats(frame, "1", SLOT_CHAMPION, 0.5, since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=4))
    assert (a.n, a.errors, a.latencies_ms) == (2, 1, (20.0,))  # r2 and r3, not r4


def test_arm_stats_naive_since_means_utc():
    a = arm_stats(log_frame(), "1", SLOT_CHAMPION, 0.5, since=datetime(2026, 1, 1, 12, 0, 4))
    assert a.n == 2 and a.latencies_ms == (30.0, 40.0)


@pytest.mark.parametrize(
    ("last", "n", "latencies"), [(2, 2, (30.0, 40.0)), (0, 0, ()), (100, 5, (10.0, 20.0, 30.0, 40.0))]
)
def test_arm_stats_last_keeps_the_newest_rows(last, n, latencies):
    frame = log_frame().iloc[::-1]  # order of the frame must not matter
    a = arm_stats(frame, "1", SLOT_CHAMPION, 0.5, last=last)
    assert a.n == n and tuple(sorted(a.latencies_ms)) == latencies


def test_arm_stats_empty_arm():
    a = arm_stats(log_frame(), "9", SLOT_CANARY, 0.5)
    assert (a.n, a.error_rate, a.low_confidence_rate, a.accuracy, a.p95_ms, a.p50_ms) == (0, 0.0, 0.0, None, None, None)


# -- compare_arms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("champ_errors", "ch_errors", "verdict"),
    [
        (0, 40, "worse"),
        (0, 0, "ok"),  # no errors on either side
        (0, 1, "ok"),  # 0.005 above: exactly the tolerance
        (10, 12, "ok"),
        (20, 0, "ok"),  # the challenger is better: still only "ok" for errors
    ],
)
def test_compare_error_rate(champ_errors, ch_errors, verdict):
    t = by_metric(compare_arms(arm(200, errors=champ_errors), challenger(200, errors=ch_errors), GUARD))["error_rate"]
    assert t.verdict == verdict and t.test == TEST_Z_ONE_SIDED
    assert t.champion == pytest.approx(champ_errors / 200) and t.challenger == pytest.approx(ch_errors / 200)
    assert t.p_value is not None and not math.isnan(t.p_value)


def test_error_rate_tolerance_is_a_shift_not_a_threshold():
    # 20/200 vs 10/200 is significant with no tolerance, not with 0.05 (0.10 is exactly 0.05 + 0.05).
    strict = GUARD.model_copy(update={"max_error_rate_increase": 0.0})
    loose = GUARD.model_copy(update={"max_error_rate_increase": 0.05})
    champ, ch = arm(400, errors=20), challenger(400, errors=40)
    assert by_metric(compare_arms(champ, ch, strict))["error_rate"].verdict == "worse"
    t = by_metric(compare_arms(champ, ch, loose))["error_rate"]
    assert t.verdict == "ok" and t.p_value == pytest.approx(0.5)


@pytest.mark.parametrize(("champ_n", "ch_n"), [(0, 100), (100, 0)])
def test_compare_empty_arm_is_insufficient(champ_n, ch_n):
    tests = compare_arms(arm(champ_n), challenger(ch_n), GUARD)
    assert {t.verdict for t in tests} == {"insufficient"}
    assert all(t.p_value is None for t in tests)


def test_compare_latency_worse_when_both_conditions_hold():
    t = by_metric(
        compare_arms(
            arm(100, latency=list(10.0 + np.arange(100) / 10)),
            challenger(100, latency=list(30.0 + np.arange(100) / 10)),
            GUARD,
        )
    )["p95_latency_ms"]
    assert t.verdict == "worse" and t.test == TEST_MANN_WHITNEY and t.p_value < 0.05
    assert t.challenger > t.champion * GUARD.max_p95_ratio + GUARD.latency_slack_ms


def test_compare_latency_significant_shift_within_ratio_is_ok():
    t = by_metric(
        compare_arms(
            arm(200, latency=list(10.0 + np.arange(200) / 100)),
            challenger(200, latency=list(11.0 + np.arange(200) / 100)),
            GUARD,
        )
    )["p95_latency_ms"]
    assert t.p_value < 0.05 and t.verdict == "ok"  # ranks differ, p95 12.9 ms is within 1.5x + 2 ms


def test_compare_latency_slow_tail_without_rank_shift_is_ok():
    slow_tail = [5.0] * 90 + [100.0] * 10
    t = by_metric(compare_arms(arm(100, latency=10.0), challenger(100, latency=slow_tail), GUARD))["p95_latency_ms"]
    assert t.challenger == pytest.approx(100.0) and t.p_value > 0.05 and t.verdict == "ok"


def test_compare_latency_without_successful_rows_is_insufficient():
    t = by_metric(compare_arms(arm(100), challenger(10, errors=10), GUARD))["p95_latency_ms"]
    assert t.verdict == "insufficient" and t.challenger is None


@pytest.mark.parametrize(("champ_low", "ch_low", "verdict"), [(10, 60, "worse"), (10, 20, "ok"), (0, 0, "ok")])
def test_compare_low_confidence(champ_low, ch_low, verdict):
    t = by_metric(compare_arms(arm(200, low=champ_low), challenger(200, low=ch_low), GUARD))["low_confidence_rate"]
    assert t.verdict == verdict


def test_low_confidence_rate_is_a_share_of_successful_rows():
    t = by_metric(compare_arms(arm(100, low=10), challenger(100, errors=50, low=10), GUARD))["low_confidence_rate"]
    assert t.champion == pytest.approx(0.1) and t.challenger == pytest.approx(0.2)


@pytest.mark.parametrize(("agreed", "verdict"), [(10, "worse"), (41, "worse"), (42, "ok"), (90, "ok")])
def test_compare_agreement_uses_the_wilson_upper_bound(agreed, verdict):
    # One-sided 95% upper bounds: 41/100 -> 0.4922 (below 0.5), 42/100 -> 0.5022 (above).
    t = by_metric(compare_arms(arm(100), challenger(100, slot=SLOT_SHADOW, compared=100, agreed=agreed), GUARD))[
        "agreement"
    ]
    upper = wilson_interval(agreed, 100, 2 * GUARD.alpha)[1]
    assert t.verdict == verdict and t.test == TEST_WILSON
    assert (upper < GUARD.min_agreement) == (verdict == "worse")
    assert (t.p_value < GUARD.alpha) == (verdict == "worse")  # the score test agrees with the bound


def test_agreement_is_tested_only_for_a_compared_arm():
    assert "agreement" not in by_metric(compare_arms(arm(100), challenger(100), GUARD))


@pytest.mark.parametrize(
    ("champ_correct", "ch_correct", "verdict"),
    [
        (90, 60, "worse"),
        (60, 90, "better"),
        (80, 79, "ok"),
        (80, 80, "ok"),
    ],
)
def test_compare_accuracy(champ_correct, ch_correct, verdict):
    t = by_metric(
        compare_arms(
            arm(100, labelled=100, correct=champ_correct), challenger(100, labelled=100, correct=ch_correct), GUARD
        )
    )["accuracy"]
    assert t.verdict == verdict and t.p_value is not None
    assert (t.p_value < GUARD.alpha) == (verdict != "ok")


@pytest.mark.parametrize(
    ("champ_labelled", "ch_labelled", "verdict"),
    [(29, 100, "insufficient"), (100, 29, "insufficient"), (30, 30, "worse")],
)
def test_compare_accuracy_needs_min_labelled(champ_labelled, ch_labelled, verdict):
    t = by_metric(
        compare_arms(
            arm(100, labelled=champ_labelled, correct=champ_labelled),
            challenger(100, labelled=ch_labelled, correct=ch_labelled // 3),
            GUARD,
        )
    )["accuracy"]
    assert t.verdict == verdict


# -- decide_stage -----------------------------------------------------------------------------------

CANARY = StageSpec(name="canary-10", kind="canary", weight=0.1, min_samples=200, max_duration_s=600)
SHADOW = StageSpec(name="shadow", kind="shadow", min_samples=100, max_duration_s=300)


@pytest.mark.parametrize(
    ("n", "elapsed", "is_last", "action"),
    [
        (100, 10, False, "wait"),
        (199, 599, True, "wait"),
        (200, 10, False, "continue"),
        (200, 10, True, "promote"),
        (500, 10, True, "promote"),
        (199, 600, False, "rollback"),
    ],
)
def test_decide_stage_by_samples_and_time(n, elapsed, is_last, action):
    d = decide_stage(arm(n), challenger(n), CANARY, GUARD, elapsed, is_last)
    assert d.action == action and d.stage == "canary-10" and d.elapsed_s == elapsed
    assert len(d.tests) == 4 and d.sample_size is None


def test_decide_stage_needs_both_arms():
    assert decide_stage(arm(1000), challenger(150), CANARY, GUARD, 10, True).action == "wait"


def test_decide_stage_max_duration_reason():
    d = decide_stage(arm(400), challenger(120), CANARY, GUARD, 601, False)
    assert d.action == "rollback"
    assert "not enough samples in max duration" in d.reason and "n=120" in d.reason and "need 200" in d.reason


@pytest.mark.parametrize(("n", "action"), [(29, "wait"), (30, "rollback")])
def test_decide_stage_early_rollback_from_30_rows(n, action):
    assert EARLY_ROLLBACK_MIN_ROWS == 30
    d = decide_stage(arm(n), challenger(n, errors=n // 2), CANARY, GUARD, 5, False)
    assert by_metric(d.tests)["error_rate"].verdict == "worse"  # significant either way
    assert d.action == action


def test_decide_stage_rollback_reason_names_metric_test_and_p():
    d = decide_stage(arm(300), challenger(300, errors=30, latency=50.0), CANARY, GUARD, 5, True)
    assert d.action == "rollback"
    assert d.reason.startswith("rollback at canary-10: error_rate 0.100 vs 0.000 (two-proportion z-test, one-sided, p=")
    assert "p95_latency_ms 50.0 ms vs 10.0 ms (Mann-Whitney U, one-sided, p=" in d.reason
    assert "< 0.05" in d.reason


def test_decide_stage_worse_beats_enough_samples():
    d = decide_stage(arm(500), challenger(500, errors=50), CANARY, GUARD, 5, True)
    assert d.action == "rollback"


def test_decide_stage_small_min_samples_still_rolls_back():
    stage = CANARY.model_copy(update={"min_samples": 10})
    d = decide_stage(arm(10), challenger(10, errors=8), stage, GUARD, 5, True)
    assert d.action == "rollback"


def test_decide_stage_shadow_judges_agreement():
    champ = arm(150)
    bad = challenger(150, slot=SLOT_SHADOW, compared=150, agreed=30)
    good = challenger(150, slot=SLOT_SHADOW, compared=150, agreed=140)
    d = decide_stage(champ, bad, SHADOW, GUARD, 5, False)
    assert d.action == "rollback" and "agreement 0.200 on 150 compared requests (Wilson score interval" in d.reason
    assert decide_stage(champ, good, SHADOW, GUARD, 5, False).action == "continue"


def test_decide_stage_insufficient_accuracy_does_not_block():
    d = decide_stage(arm(200, labelled=5, correct=5), challenger(200, labelled=5, correct=0), CANARY, GUARD, 5, True)
    assert by_metric(d.tests)["accuracy"].verdict == "insufficient" and d.action == "promote"


# -- decide_ab --------------------------------------------------------------------------------------

AB = ABSettings(min_detectable_effect=0.1, alpha=0.05, power=0.8, max_duration_s=3600)
PLANNED = required_sample_size(0.8, 0.1, 0.05, 0.8)


def ab_arms(n: int, champ_acc: float, ch_acc: float, errors: int = 0):
    return (
        arm(n, labelled=n, correct=round(champ_acc * n)),
        challenger(n, errors=errors, labelled=n - errors, correct=round(ch_acc * (n - errors))),
    )


def test_decide_ab_waits_for_the_planned_sample():
    champ, ch = ab_arms(PLANNED - 1, 0.8, 0.99)  # a big gap, but no peeking before the plan
    d = decide_ab(champ, ch, AB, 0.8, 100)
    acc = by_metric(d.tests)["accuracy"]
    assert d.action == "wait" and d.sample_size == PLANNED and d.stage == "ab"
    assert acc.verdict == "insufficient" and acc.p_value is None and acc.test == TEST_Z_TWO_SIDED


def test_decide_ab_rolls_back_after_max_duration():
    champ, ch = ab_arms(PLANNED - 1, 0.8, 0.8)
    d = decide_ab(champ, ch, AB, 0.8, 3600)
    assert d.action == "rollback" and "not enough labelled samples in max duration" in d.reason
    assert f"need {PLANNED}" in d.reason


@pytest.mark.parametrize(
    ("ch_acc", "promote_on_tie", "action", "verdict"),
    [
        (0.92, False, "promote", "better"),
        (0.65, True, "rollback", "worse"),
        (0.81, False, "rollback", "ok"),
        (0.81, True, "promote", "ok"),
    ],
)
def test_decide_ab_at_the_planned_sample(ch_acc, promote_on_tie, action, verdict):
    champ, ch = ab_arms(PLANNED, 0.8, ch_acc)
    ab = AB.model_copy(update={"promote_on_tie": promote_on_tie})
    d = decide_ab(champ, ch, ab, 0.8, 100)
    acc = by_metric(d.tests)["accuracy"]
    assert d.action == action and acc.verdict == verdict and acc.test == TEST_Z_TWO_SIDED
    z, p = two_proportion_ztest(ch.correct, ch.n_labelled, champ.correct, champ.n_labelled, "two-sided")
    assert acc.p_value == pytest.approx(p) and acc.statistic == pytest.approx(z)
    if verdict == "ok":
        assert "no significant difference" in d.reason
        assert ("keeping the champion" in d.reason) != promote_on_tie


def test_decide_ab_guard_rolls_back_early_on_errors():
    champ, ch = ab_arms(50, 0.8, 0.8, errors=20)
    d = decide_ab(champ, ch, AB, 0.8, 10, guard=GUARD)
    assert d.action == "rollback" and "error_rate" in d.reason
    assert by_metric(d.tests)["error_rate"].verdict == "worse"


def test_decide_ab_does_not_judge_quality_proxies_early():
    champ = arm(100, labelled=10, correct=8)
    ch = challenger(100, low=60, labelled=10, correct=8)
    d = decide_ab(champ, ch, AB, 0.8, 10)
    assert d.action == "wait" and "low_confidence_rate" not in by_metric(d.tests)


# -- detect_regression ------------------------------------------------------------------------------

BAKE = BakeSettings(min_samples=200, max_duration_s=600)


def test_regression_rolls_back_on_a_worse_metric():
    d = detect_regression(arm(500), challenger(60, errors=10), BAKE, GUARD, 30)
    assert d.action == "rollback" and d.stage == "bake"
    assert "regresses" in d.reason and "error_rate" in d.reason


@pytest.mark.parametrize(("n", "elapsed", "action"), [(100, 30, "wait"), (200, 30, "continue"), (100, 600, "continue")])
def test_regression_without_a_worse_metric(n, elapsed, action):
    d = detect_regression(arm(500), challenger(n), BAKE, GUARD, elapsed)
    assert d.action == action


def test_regression_too_little_traffic_is_not_a_regression():
    d = detect_regression(arm(500), challenger(20), BAKE, GUARD, 900)
    assert d.action == "continue" and "not a regression" in d.reason


# -- render_markdown --------------------------------------------------------------------------------


def test_render_markdown_shows_verdict_arms_tests_and_reason():
    d = decide_stage(
        arm(300, version="7"),
        challenger(300, errors=30, version="8", slot=SLOT_SHADOW, compared=270, agreed=250),
        SHADOW,
        GUARD,
        42,
        False,
    )
    md = render_markdown(d)
    assert md.startswith("## shadow: ROLLBACK")
    for text in (TEST_Z_ONE_SIDED, TEST_MANN_WHITNEY, TEST_WILSON, "| 7 |", "| 8 |", "error_rate", d.reason):
        assert text in md
    assert "| accuracy | two-proportion z-test, one-sided | – | – | – | – | insufficient |" in md


def test_render_markdown_ab_shows_the_planned_sample():
    champ, ch = ab_arms(PLANNED, 0.8, 0.92)
    md = render_markdown(decide_ab(champ, ch, AB, 0.8, 100))
    assert "PROMOTE" in md and f"planned sample size {PLANNED}" in md and TEST_Z_TWO_SIDED in md
