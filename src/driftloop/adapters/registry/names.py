"""What the registry's routing is made of, without MLflow: the alias names, the rollout tag and
its parser, and how an unreachable tracking server is named. The MLflow client modules and the
REST source (:mod:`.rest`) share them, so a serving process that reads the routing over HTTP never
imports MLflow."""

from __future__ import annotations

import json

from driftloop.core.errors import RegistryError
from driftloop.core.types import MonitorStatus, RolloutState

CHAMPION = "champion"
CHALLENGER = "challenger"
# The registered model's tag holding the desired traffic split (a RolloutState as JSON): kept
# with the aliases, so every replica reads both in one call and converges to the same routing.
ROLLOUT_TAG = "driftloop.rollout"
# The registered model's tag holding the monitoring flow's latest verdict (a MonitorStatus as
# JSON): replicas read it with the routing, so no file has to be shared with them.
MONITOR_TAG = "driftloop.monitor_status"

# How an unreachable tracking server is named in messages: as the CLI names it, after its setting.
TRACKING_SERVER = "the MLflow tracking server (registry.tracking_uri)"

# The pyfunc's artifact holding the model's files (driftloop.models.persist: no pickle), and the
# artifact versions registered before signed model files held instead (a pickle: refused).
MODEL_ARTIFACT = "model"
LEGACY_PICKLE_ARTIFACT = "classifier"
# Version tags written at registration: the Ed25519 signature over the model's MANIFEST.json
# (driftloop.core.signing) and that manifest's SHA-256, for people and audits.
SIGNATURE_TAG = "model.signature"
MANIFEST_TAG = "model.manifest_sha256"
FORMAT_TAG = "model.format"


def parse_rollout_state(tags: dict[str, str], url: str | None = None) -> RolloutState:
    """The rollout state in a registered model's tags (the default state when there is none)."""
    raw = tags.get(ROLLOUT_TAG)
    if not raw:
        return RolloutState()
    try:
        return RolloutState(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        # A hand-edited or foreign tag: refuse loudly rather than route on a guess.
        raise RegistryError(
            f"registered model tag {ROLLOUT_TAG!r} is not a valid rollout state: {exc}", url=url
        ) from None


def parse_monitor_status(tags: dict[str, str]) -> MonitorStatus | None:
    """The monitoring verdict in a registered model's tags (None when absent or unreadable: the
    drift gauges then keep their last value; a verdict is never a reason to stop routing)."""
    raw = tags.get(MONITOR_TAG)
    if not raw:
        return None
    try:
        body = json.loads(raw)
        return MonitorStatus(
            str(body["model_version"]),
            bool(body["drift_detected"]),
            float(body["share_drifted"]),
            str(body.get("checked_at", "")),
        )
    except (ValueError, TypeError, KeyError):
        return None
