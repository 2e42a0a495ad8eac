"""The routing snapshot: which loaded model answers in which slot, swapped as one value.

Pure: built from the routing (champion alias and rollout state) and the loaded models, with no
HTTP and no registry; a request reads one snapshot and is answered wholly by it.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from driftloop.core.types import (
    MODE_AB,
    MODE_BLUEGREEN,
    MODE_CANARY,
    MODE_SHADOW,
    SLOT_CANARY,
    SLOT_CHAMPION,
    SLOT_SHADOW,
    Routing,
)
from driftloop.serving.cache import LoadedModel

if TYPE_CHECKING:
    from driftloop.serving.batching import MicroBatcher
    from driftloop.serving.metrics import BoundMetrics

_HASH_SPACE = 1 << 32


@dataclass(frozen=True)
class Slot:
    """One loaded model in one slot, with its metric children and its micro-batcher."""

    loaded: LoadedModel
    bound: BoundMetrics
    batcher: MicroBatcher | None = field(default=None, compare=False)


SlotFactory = Callable[[LoadedModel, str], Slot]
"""Makes the :class:`Slot` of a loaded model in a named slot (binds its metrics, its batcher)."""


@dataclass(frozen=True)
class RoutingSnapshot:
    """Everything routing needs, swapped as one reference so a request never sees a mix."""

    routing: Routing
    champion: Slot
    canary: Slot | None  # the challenger answering a share of callers (canary, A/B)
    shadow: Slot | None  # the challenger answering a mirrored copy of every request
    standby: LoadedModel | None  # blue-green: loaded and warm, no traffic yet
    complete: bool  # False while the challenger could not be loaded (retried)

    def pick_canary(self, caller_id: bytes | None) -> bool:
        """Whether a request goes to the canary: sticky per caller (``X-Caller-Id``; the key hashed
        with the rollout id, so a caller keeps its side for the rollout's whole life, and stays
        on the canary as the weight grows), a fair coin weighted by the share without one."""
        weight = self.routing.state.weight
        if caller_id:
            salt = self.routing.state.rollout_id.encode()
            return zlib.crc32(salt + b"\x00" + caller_id) < weight * _HASH_SPACE
        return random.random() < weight


def caller_id(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The caller's key for sticky routing: the first non-empty ``X-Caller-Id`` header."""
    for name, value in headers:
        if name == b"x-caller-id" and value:
            return value
    return None


def build_snapshot(
    routing: Routing,
    champion: LoadedModel,
    challenger: LoadedModel | None,
    complete: bool,
    make_slot: SlotFactory,
) -> RoutingSnapshot:
    """The snapshot for ``routing``: the challenger is the canary (canary and A/B with a weight),
    the shadow (shadow mode) or the warm standby (blue-green); the champion always answers."""
    mode = routing.state.mode
    canary = shadow = None
    standby = None
    if challenger is not None:
        if mode in (MODE_CANARY, MODE_AB) and routing.state.weight > 0:
            canary = make_slot(challenger, SLOT_CANARY)
        elif mode == MODE_SHADOW:
            shadow = make_slot(challenger, SLOT_SHADOW)
        elif mode == MODE_BLUEGREEN:
            standby = challenger
    return RoutingSnapshot(routing, make_slot(champion, SLOT_CHAMPION), canary, shadow, standby, complete)
