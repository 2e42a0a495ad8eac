from datetime import UTC, datetime, timedelta

import pytest

from driftloop.config.settings import MonitorSettings, PromotionPolicy, RetrainPolicy
from driftloop.core.policy import TriggerRecord, decide_promotion, should_retrain
from driftloop.core.types import DriftResult, EvalReport, SignalResult


def report(acc: float, f1: float | None = None, md5: str = "e") -> EvalReport:
    return EvalReport(accuracy=acc, macro_f1=acc if f1 is None else f1, n=100, ece=0.05, eval_md5=md5)


POLICY = PromotionPolicy(metric="accuracy", min_score=0.6, max_regression=0.01, min_improvement=0.0)


def test_first_model_promoted_when_above_floor():
    d = decide_promotion(report(0.8), None, POLICY)
    assert d.promote and "first model" in d.reason


@pytest.mark.parametrize("acc", [0.59, 0.0])
def test_floor_applies_even_to_first_model(acc):
    d = decide_promotion(report(acc), None, POLICY)
    assert not d.promote and "floor" in d.reason


@pytest.mark.parametrize(
    ("cand", "champ", "promote"),
    [
        (0.80, 0.80, True),  # equal: no regression
        (0.791, 0.80, True),  # within the 0.01 tolerance
        (0.789, 0.80, False),  # just beyond it
        (0.85, 0.80, True),
    ],
)
def test_regression_tolerance_boundary(cand, champ, promote):
    assert decide_promotion(report(cand), report(champ), POLICY).promote is promote


def test_required_improvement():
    policy = POLICY.model_copy(update={"min_improvement": 0.02, "max_regression": 0.0})
    assert not decide_promotion(report(0.81), report(0.80), policy).promote
    assert decide_promotion(report(0.821), report(0.80), policy).promote


def test_metric_is_configurable():
    policy = POLICY.model_copy(update={"metric": "macro_f1"})
    assert not decide_promotion(report(0.9, f1=0.7), report(0.8, f1=0.8), policy).promote


def test_different_eval_sets_refused():
    d = decide_promotion(report(0.9, md5="a"), report(0.8, md5="b"), POLICY)
    assert not d.promote and "different evaluation sets" in d.reason


NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
MON = MonitorSettings(min_window=100, window_size=400)
RET = RetrainPolicy(cooldown_s=600)


def drift(detected=True, n=300, wid="w1", accuracy=None, n_labelled=0) -> DriftResult:
    sig = SignalResult("text_drift", 0.7, 0.6, detected)
    return DriftResult(
        wid, None, None, 500, n, (sig,), detected, 1.0 if detected else 0.0, accuracy=accuracy, n_labelled=n_labelled
    )


def test_retrain_on_confirmed_drift():
    assert should_retrain(drift(), MON, RET, [], NOW).retrain


def test_no_retrain_without_drift():
    d = should_retrain(drift(detected=False), MON, RET, [], NOW)
    assert not d.retrain and "no drift" in d.reason


@pytest.mark.parametrize(("n", "expected"), [(99, False), (100, True)])
def test_minimum_window(n, expected):
    assert should_retrain(drift(n=n), MON, RET, [], NOW).retrain is expected


def test_same_window_never_triggers_twice():
    hist = [TriggerRecord("w1", NOW - timedelta(days=1))]
    d = should_retrain(drift(wid="w1"), MON, RET, hist, NOW)
    assert not d.retrain and "already triggered" in d.reason


@pytest.mark.parametrize(("ago", "expected"), [(599, False), (601, True)])
def test_cooldown_boundary(ago, expected):
    hist = [TriggerRecord("w0", NOW - timedelta(seconds=ago))]
    assert should_retrain(drift(wid="w2"), MON, RET, hist, NOW).retrain is expected


QUALITY = RetrainPolicy(cooldown_s=600, min_live_accuracy=0.75, min_labelled=50)


@pytest.mark.parametrize(
    ("accuracy", "n_labelled", "expected"),
    [
        (0.74, 50, True),  # below the floor with enough labels: retrain without drift
        (0.75, 50, False),  # at the floor
        (0.10, 49, False),  # too few labels to judge
        (None, 0, False),  # no labels at all
    ],
)
def test_live_quality_trigger(accuracy, n_labelled, expected):
    d = should_retrain(drift(detected=False, accuracy=accuracy, n_labelled=n_labelled), MON, QUALITY, [], NOW)
    assert d.retrain is expected
    if expected:
        assert "live accuracy 0.740" in d.reason


def test_live_quality_trigger_is_off_by_default():
    d = should_retrain(drift(detected=False, accuracy=0.1, n_labelled=500), MON, RET, [], NOW)
    assert not d.retrain
