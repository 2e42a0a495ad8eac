"""window of the prediction log vs reference → Evidently → decision → retrain trigger.

A recent promotion is first held to its predecessor's live baseline: a regression is undone,
and a retrain opened, before the window is judged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from driftloop.adapters import tracing, wiring
from driftloop.config.settings import Settings
from driftloop.core.analysis import ACTION_ROLLBACK, StageDecision
from driftloop.core.overlays import flow_settings
from driftloop.core.triggers import DRIFT_EVENT, DriftEvent
from driftloop.core.types import DriftResult, HistoryEntry, ModelRef, RetrainDecision
from driftloop.data import dataset
from driftloop.data.dataset import LABEL, TEXT
from driftloop.flows import source_version
from driftloop.flows.retraining import retrain_after_regression, retraining
from driftloop.flows.training import TrainingOutcome
from driftloop.tasks import data, dispatch, model, monitor, rollout as rollout_steps


@dataclass(frozen=True)
class MonitorOutcome:
    """What a monitoring run found and did: the drift verdict, the retrain decision, and the
    retrain run or drift event it started (or the promotion it undid)."""

    champion: ModelRef | None
    drift: DriftResult | None
    decision: RetrainDecision
    report: str = ""
    retrain: TrainingOutcome | None = None
    rolled_back: HistoryEntry | None = None  # a promotion undone because it regressed
    event_id: str = ""  # the drift event emitted instead of an inline retrain (retrain.dispatch: event)


def _run_name() -> str:
    return f"monitor {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"


def span_attributes(out: MonitorOutcome) -> dict[str, Any]:
    """What the monitoring run's span records about its verdict."""
    return {
        "driftloop.model_version": out.champion.version if out.champion else None,
        "driftloop.drift_detected": out.drift.drift_detected if out.drift else None,
        "driftloop.share_drifted": out.drift.share_drifted if out.drift else None,
        "driftloop.window_id": out.drift.window_id if out.drift else None,
        "driftloop.retrain": out.decision.retrain,
        "driftloop.reason": out.decision.reason[:500],
        "driftloop.rolled_back": out.rolled_back is not None,
    }


@flow(name="monitoring", version=source_version(__file__), flow_run_name=_run_name, log_prints=True)
@tracing.traced_flow("monitoring", run_id=lambda: str(flow_run.id or "local"), outcome=span_attributes)
def monitoring(trigger_retrain: bool = True, config: list[str] | None = None) -> MonitorOutcome:
    """Check the newest window of production traffic and start a retrain run when it drifted."""
    settings = flow_settings(config)
    parts = wiring.build(settings)
    run_id = str(flow_run.id or "local")
    champion = model.champion_ref(parts.registry)
    if champion is None:
        return MonitorOutcome(None, None, RetrainDecision(False, "no champion to monitor yet"))
    # A recent promotion is held to its predecessor's live baseline first: a regression is undone
    # before anything else is judged on the regressed model's answers.
    regression = rollout_steps.check_promotion(
        parts.history, parts.log_root, champion, settings.rollout, settings.monitor.low_confidence
    )
    if regression is not None and regression.action == ACTION_ROLLBACK:
        return undo_promotion(regression, champion, parts, settings, run_id, trigger_retrain, config)
    # A window that cannot fill stops at the champion's registration, not at the log's start.
    registered = model.version_created(parts.registry, champion)
    window: pd.DataFrame = monitor.load_window(
        parts.log_root, champion.version, settings.monitor.window_size, since=registered
    )
    if len(window) < settings.monitor.min_window:
        decision = RetrainDecision(
            False,
            f"window has {len(window)} distinct predictions of {champion}, "
            f"fewer than monitor.min_window={settings.monitor.min_window}",
        )
        get_run_logger().info(decision.reason)
        return MonitorOutcome(champion, None, decision)
    result, report = check_drift(settings, parts, champion, window, run_id)
    if trigger_retrain:
        # Decided and recorded in one atomic step of the ledger, before the retrain starts: a
        # monitor racing this one on the same window is told it already triggered, and a crash
        # mid-retrain cannot let the window fire twice.
        decision = monitor.claim_window(result, settings.monitor, settings.retrain, parts.ledger, run_id)
    else:
        decision = monitor.should_retrain(result, settings.monitor, settings.retrain, parts.ledger)
    get_run_logger().info(
        "%s -> %s: %s", result.summary(), "retrain" if decision.retrain else "no retrain", decision.reason
    )
    if not (decision.retrain and trigger_retrain):
        return MonitorOutcome(champion, result, decision, report)
    return start_retrain(settings, parts, champion, result, decision, report, run_id, config)


def check_drift(
    settings: Settings, parts: wiring.Components, champion: ModelRef, window: pd.DataFrame, run_id: str
) -> tuple[DriftResult, str]:
    """The window against the champion's reference (Evidently, calibrated thresholds), published
    as an MLflow run and the status file; returns the result and the report's URI."""
    champion_model = model.load_model(parts.registry, champion)
    # The champion's own reference (refreshed by the retrain that made it), else the prepared one
    # of the data set it was trained on.
    champion_tags = model.version_tags(parts.registry, champion)
    md5 = champion_tags.get("reference.md5")
    if md5:
        source = data.restore_dataset(parts.datasets, md5, parts.reports_dir / f"reference-{md5}.csv")
    else:
        splits = data.prepare(settings.data, parts.prepared_dir)
        dataset.require_same_data(splits, champion_tags, str(champion))
        source = splits["reference"]
    reference = monitor.predict_reference(champion_model, dataset.read_labelled(source, TEXT, LABEL))
    # A champion with sentence embeddings (the transformer family) adds embedding drift.
    embed = getattr(champion_model, "embed", None)
    calibration = monitor.calibrate(
        reference,
        len(window),
        settings.monitor,
        champion,
        parts.reports_dir,
        reference_is_sample=md5 is not None,
        embed=embed,
    )
    result = monitor.detect_drift(
        reference, window, settings.monitor, calibration, parts.reports_dir / f"drift-{run_id}.html", embed=embed
    )
    report = monitor.publish_drift(parts.registry, result, champion, run_id, settings.registry.ui_url)
    monitor.publish_status(parts.registry, result, champion)
    return result, report


def start_retrain(
    settings: Settings,
    parts: wiring.Components,
    champion: ModelRef,
    result: DriftResult,
    decision: RetrainDecision,
    report: str,
    run_id: str,
    config: list[str] | None,
) -> MonitorOutcome:
    """Retrain on the drifted window this run claimed in the ledger: here (``retrain.dispatch:
    inline``) or through a drift event that a worker's trigger turns into a retrain run (``event``)."""
    logger = get_run_logger()
    if settings.retrain.dispatch == "event":
        # A worker runs the retrain: prefect.yaml's trigger on this event, one run per window.
        event_id = dispatch.emit_drift_event(
            DriftEvent(
                settings.registry.model_name,
                result.window_id,
                decision.reason,
                report,
                champion.version,
                run_id,
                tuple(config or ()),
            )
        )
        logger.info("emitted %s %s for window %s", DRIFT_EVENT, event_id, result.window_id)
        return MonitorOutcome(champion, result, decision, report, event_id=event_id)
    state = retraining(
        reason=decision.reason,
        requested_by="drift-monitor",
        window_id=result.window_id,
        report=report,
        config=config,
        return_state=True,
    )
    if not state.is_completed():
        # The retrain run failed on its own (it shows as such in the UI); the champion is unchanged
        # and this monitor run still did its job.
        logger.error("retrain run ended %s: %s", state.type.value, state.message)
        return MonitorOutcome(champion, result, decision, report)
    return MonitorOutcome(champion, result, decision, report, state.result())


def undo_promotion(
    regression: StageDecision,
    champion: ModelRef,
    parts: wiring.Components,
    settings: Settings,
    run_id: str,
    trigger_retrain: bool,
    config: list[str] | None,
) -> MonitorOutcome:
    """Roll a regressed champion back to the version before it and, with
    ``rollout.bake.retrain_on_regression``, open a retrain with the evidence."""
    logger = get_run_logger()
    evidence = str(rollout_steps.publish_analysis(regression, parts.reports_dir / "rollouts", f"watch-{run_id[:8]}"))
    entry = rollout_steps.rollback_champion(
        parts.registry,
        parts.history,
        reason=f"post-promotion regression of {champion}: {regression.reason}",
        actor=f"prefect:{run_id}",
        report=evidence,
        expected=champion,
    )
    if entry is None:
        decision = RetrainDecision(
            False,
            f"{champion} regressed, but it is no longer the champion or the history names no earlier good version",
        )
        logger.warning(decision.reason)
        return MonitorOutcome(champion, None, decision, evidence)
    logger.warning("rolled back %s -> v%s: %s", champion, entry.to_version, regression.reason)
    if not (trigger_retrain and settings.rollout.bake.retrain_on_regression):
        return MonitorOutcome(
            champion,
            None,
            RetrainDecision(False, f"rolled back {champion}; no retrain started"),
            evidence,
            rolled_back=entry,
        )
    retrain = retrain_after_regression(
        champion,
        regression.reason,
        requested_by="regression-guard",
        window_id=f"regression-v{champion.version}-{entry.time}",
        evidence=evidence,
        ledger=parts.ledger,
        config=config,
    )
    decision = RetrainDecision(True, f"rolled back {champion} (post-promotion regression); retrain opened")
    return MonitorOutcome(champion, None, decision, evidence, retrain, entry)
