"""window of the prediction log vs reference → Evidently → decision → retrain trigger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from driftloop import dataset, wiring
from driftloop.dataset import LABEL, TEXT
from driftloop.settings import load_settings
from driftloop.types import DriftResult, ModelRef, RetrainDecision
from flows.retraining import retraining
from flows.training import TrainingOutcome
from tasks import data, model, monitor


@dataclass(frozen=True)
class MonitorOutcome:
    champion: ModelRef | None
    drift: DriftResult | None
    decision: RetrainDecision
    report: str = ""
    retrain: TrainingOutcome | None = None


def _run_name() -> str:
    return f"monitor {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


@flow(name="monitoring", flow_run_name=_run_name, log_prints=True)
def monitoring(trigger_retrain: bool = True, config: list[str] | None = None) -> MonitorOutcome:
    """Check the newest window of production traffic and start a retrain run when it drifted."""
    settings = load_settings(config)
    parts = wiring.build(settings)
    logger = get_run_logger()
    run_id = str(flow_run.id or "local")

    champion = model.champion_ref(parts.registry)
    if champion is None:
        return MonitorOutcome(None, None, RetrainDecision(False, "no champion to monitor yet"))
    window = monitor.load_window(parts.log_root, champion.version, settings.monitor.window_size)
    if len(window) < settings.monitor.min_window:
        decision = RetrainDecision(False, f"window has {len(window)} distinct predictions of {champion}, "
                                          f"fewer than monitor.min_window={settings.monitor.min_window}")
        logger.info(decision.reason)
        return MonitorOutcome(champion, None, decision)

    splits = data.prepare(settings.data, parts.prepared_dir)
    champion_model = model.load_model(parts.registry, champion)
    # The champion's own reference (refreshed by the retrain that made it), else the prepared one.
    md5 = model.version_tags(parts.registry, champion).get("reference.md5")
    source = (data.restore_dataset(parts.datasets, md5, parts.reports_dir / f"reference-{md5}.csv")
              if md5 else splits["reference"])
    reference = monitor.predict_reference(champion_model, dataset.read_labelled(source, TEXT, LABEL))
    calibration = monitor.calibrate(reference, len(window), settings.monitor, champion, parts.reports_dir,
                                    reference_is_sample=md5 is not None)
    result = monitor.detect_drift(reference, window, settings.monitor, calibration,
                                  parts.reports_dir / f"drift-{run_id}.html")
    report = monitor.publish_drift(parts.registry, result, champion, run_id, settings.registry.ui_url)
    decision = monitor.should_retrain(result, settings.monitor, settings.retrain, parts.ledger)
    logger.info("%s -> %s: %s", result.summary(), "retrain" if decision.retrain else "no retrain",
                decision.reason)
    if not (decision.retrain and trigger_retrain):
        return MonitorOutcome(champion, result, decision, report)
    # Recorded before the run starts: a crash mid-retrain must not let this window fire twice.
    parts.ledger.record(result.window_id, decision.reason, run=run_id)
    state = retraining(reason=decision.reason, requested_by="drift-monitor", window_id=result.window_id,
                       report=report, config=config, return_state=True)
    if not state.is_completed():
        # The retrain run failed on its own (it shows as such in the UI); the champion is unchanged
        # and this monitor run still did its job.
        logger.error("retrain run ended %s: %s", state.type.value, state.message)
        return MonitorOutcome(champion, result, decision, report)
    return MonitorOutcome(champion, result, decision, report, state.result())
