"""Monitoring tasks: the window, the reference, Evidently's verdict, and publishing it."""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from driftloop.adapters import logstore
from driftloop.adapters.history import TriggerLedger
from driftloop.adapters.logstore import LogRoot
from driftloop.adapters.registry import Registry
from driftloop.config.settings import MonitorSettings, RetrainPolicy
from driftloop.core import policy
from driftloop.core.errors import ServerUnreachable
from driftloop.core.types import DriftResult, ModelRef, MonitorStatus, RetrainDecision
from driftloop.data.dataset import TEXT
from driftloop.models.families import TextClassifier
from driftloop.monitoring import drift
from driftloop.tasks import SERVER_RETRIES


# A read of the prediction log's folder, not a server call: its own short retry, not the server policy.
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def load_window(log_root: LogRoot, model_version: str, size: int, since: datetime | None = None) -> pd.DataFrame:
    """The newest distinct texts the champion answered, with annotators' labels where present:
    the newest partitions only, until the window is full or back at ``since`` (when the version
    was registered: it answered nothing before), and the labels of those rows only."""
    return logstore.read_window(log_root, size, model_version=model_version, since=since)


@task(cache_policy=NO_CACHE)
def predict_reference(model: TextClassifier, reference: pd.DataFrame) -> pd.DataFrame:
    """The champion's answers on the reference texts: the frame drift is measured against."""
    preds = model.predict(list(reference[TEXT]))
    return pd.DataFrame(
        {
            TEXT: reference[TEXT].to_numpy(),
            "intent": [p.intent for p in preds],
            "confidence": [p.confidence for p in preds],
        }
    )


@task(cache_policy=NO_CACHE)
def calibrate(
    reference: pd.DataFrame,
    window_n: int,
    cfg: MonitorSettings,
    model: ModelRef,
    cache_dir: Path,
    reference_is_sample: bool = False,
    embed: drift.Embedder | None = None,
) -> drift.Calibration:
    """Thresholds from the reference's own variation, cached per (reference, model, window size,
    whether embedding drift is calibrated)."""
    digest = hashlib.sha256(("\n".join(reference[TEXT]) + cfg.model_dump_json()).encode()).hexdigest()[:16]
    key = (
        f"calibration-{digest}-v{model.version}-n{window_n}{'-sample' if reference_is_sample else ''}"
        f"{'-emb' if embed is not None else ''}.json"
    )
    path = cache_dir / key
    if path.exists():
        return drift.Calibration.from_json(path.read_text())
    calibration = drift.calibrate(reference, window_n, cfg, reference_is_sample=reference_is_sample, embed=embed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(calibration.to_json())
    return calibration


@task(cache_policy=NO_CACHE)
def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    cfg: MonitorSettings,
    calibration: drift.Calibration,
    report_path: Path,
    embed: drift.Embedder | None = None,
) -> DriftResult:
    """The window against the reference with Evidently, under the calibrated thresholds; the
    report is written to ``report_path``."""
    window_id = drift.window_id_for(current["request_id"].astype(str))
    return drift.detect_drift(
        reference, current, cfg, calibration=calibration, report_path=report_path, window_id=window_id, embed=embed
    )


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def publish_drift(registry: Registry, result: DriftResult, model: ModelRef, flow_run: str, mlflow_ui: str) -> str:
    """The report as an MLflow artifact of a monitoring run, linked from the Prefect flow run."""
    metrics = {f"{s.name}.value": s.value for s in result.signals}
    metrics |= {f"{s.name}.threshold": s.threshold for s in result.signals}
    metrics |= {
        "drift_detected": float(result.drift_detected),
        "share_drifted": result.share_drifted,
        "window_n": float(result.n_current),
    }
    if result.accuracy is not None:
        metrics["window_accuracy"] = result.accuracy
    artifacts = {"reports": Path(result.report_path)} if result.report_path else {}
    run_id = registry.log_run(
        "monitor",
        metrics=metrics,
        artifacts=artifacts,
        tags={
            "driftloop.kind": "monitor",
            "window_id": result.window_id,
            "model.version": model.version,
            "prefect.flow_run_id": flow_run,
        },
    )
    report_uri = registry.artifact_uri(run_id, f"reports/{Path(result.report_path).name}") if result.report_path else ""
    rows = "\n".join(
        f"| {s.name} | {s.value:.4f} | {s.threshold:.4f} | {'**yes**' if s.drifted else 'no'} |" for s in result.signals
    )
    acc = (
        f"{result.accuracy:.3f} on {result.n_labelled} labelled rows"
        if result.accuracy is not None
        else "no labels yet"
    )
    create_markdown_artifact(
        f"## Drift check of {model}\n\n**{result.summary()}**\n\n"
        f"window `{result.window_id[:12]}`: {result.n_current} distinct texts vs {result.n_reference} reference\n\n"
        f"| signal | value | threshold | drifted |\n|---|---|---|---|\n{rows}\n\n"
        f"live accuracy: {acc}\n\nEvidently report: `{report_uri or result.report_path}` "
        f"(MLflow run `{run_id}`)\n",
        key="drift-summary",
        description=result.summary(),
    )
    create_link_artifact(
        f"{registry.run_url(run_id, mlflow_ui)}/artifacts",
        link_text="Evidently drift report (MLflow run artifacts)",
        key="drift-report",
    )
    return report_uri


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def publish_status(registry: Registry, result: DriftResult, model: ModelRef) -> MonitorStatus:
    """The drift verdict for ``model``, as the registered model's tag that every replica reads
    with its routing and exports as the ``driftloop_drift_*`` gauges."""
    status = MonitorStatus(
        model.version,
        result.drift_detected,
        float(result.share_drifted),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    registry.set_monitor_status(status)
    return status


@task(cache_policy=NO_CACHE)
def should_retrain(
    result: DriftResult, monitor: MonitorSettings, retrain: RetrainPolicy, ledger: TriggerLedger
) -> RetrainDecision:
    """Whether the drift result asks for a retrain, given the policy and the windows already
    triggered: a preview that records nothing (:func:`claim_window` decides and records)."""
    return policy.should_retrain(result, monitor, retrain, ledger.records(), datetime.now(UTC))


def _ledger_unreached(task: Any, task_run: TaskRun, state: State) -> bool:
    """Retry a claim only when it never reached the ledger's database: one that committed and
    then lost its answer must not claim again (it would read its own row and say no)."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, ServerUnreachable)


@task(cache_policy=NO_CACHE, **(SERVER_RETRIES | {"retry_condition_fn": _ledger_unreached}))
def claim_window(
    result: DriftResult, monitor: MonitorSettings, retrain: RetrainPolicy, ledger: TriggerLedger, run: str
) -> RetrainDecision:
    """The retrain decision for the drift result, taken and recorded in one atomic step of the
    ledger: of several monitors racing on one window, one gets the retrain; the cooldown holds
    between them."""
    return ledger.claim_window(
        result.window_id, functools.partial(policy.should_retrain, result, monitor, retrain), run=run
    )
