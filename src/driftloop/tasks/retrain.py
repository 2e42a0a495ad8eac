"""What a retrain run shows in the Prefect UI: a summary table and links to MLflow and the report."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from driftloop.adapters.registry import Registry
from driftloop.core.types import EvalReport, ModelRef, PromotionDecision
from driftloop.tasks import SERVER_RETRIES


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def publish_retrain(
    registry: Registry,
    candidate: ModelRef,
    report: EvalReport,
    decision: PromotionDecision,
    champion: ModelRef | None,
    *,
    reason: str,
    requested_by: str,
    window_id: str,
    drift_report: str,
    mlflow_ui: str,
) -> None:
    """The retrain summary table and links to the candidate's MLflow run and the drift report."""
    run_id = next((v["run_id"] for v in registry.versions() if v["version"] == candidate.version), None)
    rows: list[dict[str, Any]] = [
        {"field": "requested by", "value": requested_by},
        {"field": "reason", "value": reason},
        {"field": "window", "value": window_id or "-"},
        {"field": "candidate", "value": str(candidate)},
        {"field": "accuracy", "value": round(report.accuracy, 4)},
        {"field": "macro-F1", "value": round(report.macro_f1, 4)},
        {"field": "decision", "value": ("promote: " if decision.promote else "keep champion: ") + decision.reason},
        {"field": "champion now", "value": str(champion) if champion else "-"},
        {"field": "MLflow run", "value": run_id or "-"},
    ]
    create_table_artifact(
        rows,
        key="retrain-summary",
        description=f"{requested_by}: {reason}"[:500],
    )
    if run_id:
        create_link_artifact(
            registry.run_url(run_id, mlflow_ui), link_text=f"MLflow run of {candidate}", key="retrain-mlflow-run"
        )
    if drift_report:
        create_link_artifact(
            drift_report, link_text="Evidently drift report that asked for this retrain", key="retrain-drift-report"
        )


def request_markdown(
    *,
    requested_by: str,
    reason: str,
    window_id: str,
    drift_report: str,
    previous_rows: int,
    added_rows: int,
    quarantined_rows: int,
    reference_set: str | None,
) -> str:
    """The retrain request a retrain run publishes before training: who asked, why, and what it
    trains on (a pure function)."""
    return (
        f"## Retrain requested by {requested_by}\n\n- reason: {reason}\n- window: `{window_id or '-'}`\n"
        f"- drift report: {drift_report or '-'}\n- previous training set: {previous_rows} rows\n"
        f"- new labelled production rows: {added_rows} (quarantined: {quarantined_rows})\n"
        f"- monitoring reference: {'refreshed from ' + reference_set if reference_set else 'unchanged'}\n"
    )
