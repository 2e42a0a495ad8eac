"""What the registry's routing is made of, without MLflow: the alias names, the rollout tag and
its parser, and how an unreachable tracking server is named. The MLflow client modules and the
REST source (:mod:`.rest`) share them, so a serving process that reads the routing over HTTP never
imports MLflow."""

from __future__ import annotations

import json

from driftloop.core.errors import RegistryError
from driftloop.core.types import RolloutState

CHAMPION = "champion"
CHALLENGER = "challenger"
# The registered model's tag holding the desired traffic split (a RolloutState as JSON): kept
# with the aliases, so every replica reads both in one call and converges to the same routing.
ROLLOUT_TAG = "driftloop.rollout"

# How an unreachable tracking server is named in messages: as the CLI names it, after its setting.
TRACKING_SERVER = "the MLflow tracking server (registry.tracking_uri)"

# The pyfunc's artifact holding the pickled classifier (IntentPyfunc.load_context reads it).
CLASSIFIER_ARTIFACT = "classifier"


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
