"""What a retrain trigger carries: the drift event, its deterministic ids, and manual parameters.

Pure functions (no Prefect): the monitoring flow emits the event these describe, the dispatch flow
turns it into a retrain run of the deployment, and the CLI parses a person's ``--param`` flags.

Deduplication: a window is identified by the hash of its request ids (``DriftResult.window_id``).
The event's id is a uuid5 of that hash, so the same window always produces the same event id (the
Prefect server's trigger evaluation skips an event id it has seen in the last 30 minutes, and its
event store keeps one copy), and the retrain run is created with an idempotency key derived from
the same hash. The key is what makes "never two runs for one window" hold: the server keeps at
most one flow run per (flow, idempotency key), for as long as the run exists, across restarts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DRIFT_EVENT = "driftloop.drift.detected"
# Fixed namespace: event ids must be the same on every machine and in every release.
_NAMESPACE = uuid.UUID("5b0f7c8e-2d1a-4f7e-9c3b-6a1d2e4f8b90")


def model_resource_id(model_name: str) -> str:
    return f"driftloop.model.{model_name}"


def drift_event_id(model_name: str, window_id: str) -> uuid.UUID:
    """The same window of the same model always gives the same event id."""
    return uuid.uuid5(_NAMESPACE, f"{DRIFT_EVENT}/{model_name}/{window_id}")


def retrain_idempotency_key(model_name: str, window_id: str) -> str:
    """The flow-run idempotency key of the retrain a window asks for (one run per window)."""
    return f"retrain:{model_name}:{window_id}"


@dataclass(frozen=True)
class DriftEvent:
    """The monitoring run's request for a retrain, as the payload of ``driftloop.drift.detected``."""

    model_name: str
    window_id: str  # the hash of the window's request ids (drift.window_id_for)
    reason: str
    report: str = ""  # the Evidently report's URI
    champion_version: str = ""
    monitor_run: str = ""  # the Prefect flow run that decided
    config: tuple[str, ...] = field(default_factory=tuple)  # the monitor's overlays, reused by the retrain

    @property
    def id(self) -> uuid.UUID:
        return drift_event_id(self.model_name, self.window_id)

    @property
    def resource_id(self) -> str:
        return model_resource_id(self.model_name)

    def payload(self) -> dict[str, Any]:
        return {
            "window_id": self.window_id,
            "window_hash": self.window_id,
            "reason": self.reason,
            "report": self.report,
            "champion_version": self.champion_version,
            "monitor_run": self.monitor_run,
            "config": list(self.config),
        }


def parse_params(pairs: Iterable[str], allowed: Iterable[str]) -> dict[str, Any]:
    """``key=value`` flags as flow parameters: values are JSON when they parse (``0``, ``false``,
    ``["a"]``), else strings. An unknown or malformed name raises ``ValueError`` naming it."""
    allowed = sorted(set(allowed))
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--param {pair!r}: expected key=value")
        if key not in allowed:
            raise ValueError(
                f"--param {key}: unknown parameter {key!r}; the retraining flow takes {', '.join(allowed)}"
            )
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out
