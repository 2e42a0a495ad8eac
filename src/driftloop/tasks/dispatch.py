"""Starting a retrain elsewhere: the drift event, and a run of the retraining deployment."""

from __future__ import annotations

from typing import Any, cast

from prefect import task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun

from driftloop.core.triggers import DRIFT_EVENT, DriftEvent
from driftloop.tasks import SERVER_RETRIES


@task(cache_policy=NO_CACHE)
def emit_drift_event(event: DriftEvent) -> str:
    """Emit ``driftloop.drift.detected`` with the window's deterministic id; returns the id."""
    from prefect.events import emit_event

    emit_event(
        event=DRIFT_EVENT,
        id=event.id,
        payload=event.payload(),
        resource={
            "prefect.resource.id": event.resource_id,
            "prefect.resource.name": event.model_name,
            "driftloop.window_id": event.window_id,
        },
    )
    return str(event.id)


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def run_retrain_deployment(
    deployment: str, parameters: dict[str, Any], tags: list[str], idempotency_key: str | None, ui_url: str
) -> FlowRun:
    """Create a run of ``deployment`` (returns at once). With ``idempotency_key`` the server
    returns the run it already has for that key instead of creating a second one."""
    from prefect.deployments import run_deployment

    # Called from sync code, run_deployment returns the run itself, never the coroutine.
    run = cast(
        FlowRun,
        run_deployment(deployment, parameters=parameters, tags=tags, idempotency_key=idempotency_key, timeout=0),
    )
    create_link_artifact(f"{ui_url}/runs/flow-run/{run.id}", link_text=f"retrain run {run.name}", key="retrain-run")
    return run
