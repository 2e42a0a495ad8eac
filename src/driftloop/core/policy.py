"""Pure decisions of the loop: whether to promote, whether to retrain.

Nothing here touches a server; applying a decision is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from driftloop.config.settings import MonitorSettings, PromotionPolicy, RetrainPolicy
from driftloop.core.types import DriftResult, EvalReport, PromotionDecision, RetrainDecision


def decide_promotion(candidate: EvalReport, champion: EvalReport | None, policy: PromotionPolicy) -> PromotionDecision:
    """Promote when the candidate clears the floor and does not regress against the champion.

    Both reports must come from the same evaluation set (``eval_md5``): scores from different
    sets are not comparable, and refusing is safer than guessing.
    """
    metric = policy.metric
    score = getattr(candidate, metric)
    if score < policy.min_score:
        return PromotionDecision(False, f"{metric} {score:.4f} is below the floor {policy.min_score:.4f}")
    if champion is None:
        return PromotionDecision(True, f"first model: {metric} {score:.4f} clears the floor {policy.min_score:.4f}")
    if candidate.eval_md5 and champion.eval_md5 and candidate.eval_md5 != champion.eval_md5:
        return PromotionDecision(False, "candidate and champion were scored on different evaluation sets")
    best = getattr(champion, metric)
    delta = score - best
    if delta < -policy.max_regression:
        return PromotionDecision(
            False,
            f"{metric} {score:.4f} regresses {-delta:.4f} against the champion's {best:.4f} "
            f"(tolerance {policy.max_regression:.4f})",
        )
    if policy.min_improvement > 0 and delta < policy.min_improvement:
        return PromotionDecision(
            False,
            f"{metric} {score:.4f} improves {delta:+.4f} on the champion's {best:.4f}, "
            f"less than the required {policy.min_improvement:.4f}",
        )
    return PromotionDecision(True, f"{metric} {score:.4f} vs champion {best:.4f} ({delta:+.4f})")


@dataclass(frozen=True)
class TriggerRecord:
    """A retrain trigger that already fired: which window, when."""

    window_id: str
    time: datetime


def should_retrain(
    drift: DriftResult, monitor: MonitorSettings, policy: RetrainPolicy, history: list[TriggerRecord], now: datetime
) -> RetrainDecision:
    """Retrain on a confirmed drift, or on live accuracy below the floor, of a big enough
    window; at most once per window, never within the cooldown of the previous trigger."""
    if drift.n_current < monitor.min_window:
        return RetrainDecision(
            False,
            f"window has {drift.n_current} distinct predictions, fewer than monitor.min_window={monitor.min_window}",
        )
    quality_low = (
        policy.min_live_accuracy is not None
        and drift.accuracy is not None
        and drift.n_labelled >= policy.min_labelled
        and drift.accuracy < policy.min_live_accuracy
    )
    if not drift.drift_detected and not quality_low:
        return RetrainDecision(False, f"no drift ({drift.summary()})")
    why = f"drift confirmed: {drift.summary()}" if drift.drift_detected else "live quality dropped"
    if quality_low:
        why += (
            f"; live accuracy {drift.accuracy:.3f} on {drift.n_labelled} labelled rows < {policy.min_live_accuracy:.3f}"
        )
    if any(rec.window_id == drift.window_id for rec in history):
        return RetrainDecision(False, f"window {drift.window_id[:12]} already triggered a retrain")
    if history:
        last = max(rec.time for rec in history)
        wait = timedelta(seconds=policy.cooldown_s) - (now - last)
        if wait > timedelta(0):
            return RetrainDecision(
                False, f"in cooldown: last trigger {last.isoformat()}, {wait.total_seconds():.0f}s left"
            )
    return RetrainDecision(True, why)
