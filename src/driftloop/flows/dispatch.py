"""drift event → one retrain run per window (the target of prefect.yaml's drift trigger)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.settings import get_current_settings

from driftloop.core.overlays import overlay_names
from driftloop.core.triggers import retrain_idempotency_key
from driftloop.tasks import dispatch

RETRAIN_DEPLOYMENT = "retraining/retrain"


@flow(name="retrain-dispatch", flow_run_name="dispatch drift window {window_id}", log_prints=True)
def retrain_dispatch(
    window_id: str,
    reason: str,
    model_name: str,
    report: str = "",
    champion_version: str = "",
    requested_by: str = "drift-monitor",
    config: list[str] | None = None,
    deployment: str = RETRAIN_DEPLOYMENT,
) -> str:
    """Start the retrain a drift event asks for, at most once per window.

    Prefect's RunDeployment action gives every firing of a trigger a fresh idempotency key, so a
    duplicate event that fires the trigger again would start a second retrain. This flow creates
    the run itself with a key derived from the window's hash: the server keeps one flow run per
    key, and a duplicate event only costs this short run. Returns the retrain run's id.

    ``config`` comes from the event's payload: only overlay names from ``configs/`` pass
    (:func:`~driftloop.core.overlays.overlay_names`); a path fails this run before anything starts."""
    names = overlay_names(config)
    logger = get_run_logger()
    key = retrain_idempotency_key(model_name, window_id)
    parameters: dict[str, Any] = {
        "reason": reason,
        "requested_by": requested_by,
        "window_id": window_id,
        "report": report,
    }
    if names:
        parameters["config"] = names
    tags = [f"requested_by:{requested_by}", f"window:{window_id}", f"model:{model_name}"]
    if champion_version:
        tags.append(f"champion:v{champion_version}")
    ui_url = get_current_settings().ui_url or ""
    run = dispatch.run_retrain_deployment(deployment, parameters, tags, key, ui_url)
    logger.info("retrain run %s (%s) for window %s, idempotency key %r", run.name, run.id, window_id, key)
    return str(run.id)
