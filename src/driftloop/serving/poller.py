"""The routing poller: reads the registry on a schedule, loads what the routing needs, swaps
the snapshot in and publishes it as metrics."""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import replace

from driftloop.core.errors import ModelRefused
from driftloop.core.types import SLOT_CHAMPION, MonitorStatus, Routing
from driftloop.serving.batching import MicroBatcher
from driftloop.serving.cache import LoadedModel, ModelCache, ModelSource, predict_texts
from driftloop.serving.metrics import ServingMetrics
from driftloop.serving.snapshot import RoutingSnapshot, Slot, build_snapshot

log = logging.getLogger(__name__)

# Longest wait between polls while the registry or a load keeps failing. A poll loop, not a retry
# of one call (driftloop.core.retry): a replica keeps serving what it has and polls for as long as it runs.
MAX_BACKOFF_S = 30.0


class RoutingPoller:
    """Keeps the serving models at the source's desired routing.

    ``poll`` reads the champion and the rollout state (one registry call), loads and warms any
    version it has not got yet, then swaps one attribute (``serving``): requests read it once, so
    each is answered wholly by one snapshot. The champion, the challenger and the previous
    champion stay loaded, so promoting or rolling back is a swap without a load. A background
    thread polls every ``interval_s``; after a failure it backs off (doubling, up to
    :data:`MAX_BACKOFF_S`) and the current snapshot keeps serving. A challenger that cannot be
    loaded never stops the champion: it serves alone until the challenger loads.
    """

    def __init__(
        self,
        source: ModelSource,
        metrics: ServingMetrics,
        interval_s: float,
        low_confidence: float = 0.5,
        micro_batch_texts: int = 64,
        max_queued_texts: int = 256,
    ):
        self.source = source
        self.metrics = metrics
        self.interval_s = interval_s
        self.low_confidence = low_confidence
        self.micro_batch_texts = micro_batch_texts
        self.max_queued_texts = max_queued_texts
        self.models = ModelCache(source)
        self.serving: RoutingSnapshot | None = None
        self.monitor: MonitorStatus | None = None  # the monitoring flow's latest verdict
        self._failures = 0
        self._challenger_failures = 0
        self._warned_no_champion = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        """The champion being served."""
        serving = self.serving
        return serving.champion.loaded if serving else None

    def version_or_none(self) -> str:
        """The champion's version, or "none" (the metrics' label before a model is loaded)."""
        serving = self.serving
        return serving.champion.bound.version if serving else "none"

    def poll(self) -> bool:
        """One check of the desired routing; True when a new snapshot was swapped in. Raises on
        errors reading the source or loading the champion."""
        with self._poll_lock:
            routing = self.source.routing()
            # The monitoring verdict rides along with the routing but changes nothing served:
            # kept apart, so a new verdict never rebuilds the snapshot.
            self.monitor = routing.monitor
            routing = replace(routing, monitor=None)
            old = self.serving
            if routing.champion is None:
                if old is not None and not self._warned_no_champion:
                    log.warning("the source has no champion; %s keeps serving", old.champion.loaded.ref)
                    self._warned_no_champion = True
                return False
            self._warned_no_champion = False
            if old is not None and old.complete and old.routing == routing:
                return False
            champion = self.models.get(routing.champion)
            challenger, complete = self._challenger(routing)
            if old is not None and not old.complete and not complete and old.routing == routing:
                return False
            new = build_snapshot(routing, champion, challenger, complete, self._slot)
            # The previous champion stays loaded: an instant switch back.
            self.models.keep(
                [champion, *([challenger] if challenger else [])], [old.champion.loaded.ref] if old else []
            )
            self.serving = new
            self._publish(new)
            if old is None or old.champion.loaded.ref != champion.ref:
                log.info("now serving %s (was %s)", champion.ref, old.champion.loaded.ref if old else None)
            if old is None or old.routing.state != routing.state:
                log.info("routing: %s", routing.state)
            return True

    def _challenger(self, routing: Routing) -> tuple[LoadedModel | None, bool]:
        """The rollout's challenger, loaded, and whether the routing is complete (False: the
        challenger is wanted but could not be loaded; counted, and tried again next poll)."""
        if routing.challenger is None or routing.challenger == routing.champion:
            return None, True
        try:
            challenger = self.models.get(routing.challenger)
        except Exception as exc:
            self._challenger_failures += 1
            self.metrics.count_error("load_challenger")
            self._refused(exc)
            if self._challenger_failures == 1:
                log.exception("loading challenger %s failed; the champion serves alone", routing.challenger)
            else:
                log.warning("loading challenger %s failed again: %s", routing.challenger, exc)
            return None, False
        self._challenger_failures = 0
        return challenger, True

    def _slot(self, loaded: LoadedModel, name: str) -> Slot:
        batcher = None
        if self.micro_batch_texts > 0:
            batcher = MicroBatcher(
                functools.partial(predict_texts, loaded.model),
                self.micro_batch_texts,
                self.metrics.batch_texts.labels(loaded.ref.version, name).observe,
                self.max_queued_texts,
            )
        return Slot(loaded, self.metrics.bind(loaded.ref.version, name, self.low_confidence), batcher)

    def _publish(self, new: RoutingSnapshot) -> None:
        """The info, weight and rollout gauges of a newly swapped-in snapshot; one swap counted."""
        m = self.metrics
        m.model_info.clear()
        m.traffic_weight.clear()
        m.rollout_info.clear()
        name, version = new.champion.loaded.ref.name, new.champion.loaded.ref.version
        m.model_info.labels(name, version, SLOT_CHAMPION).set(1)
        weight = new.routing.state.weight if new.canary else 0.0
        m.traffic_weight.labels(SLOT_CHAMPION, version).set(1.0 - weight)
        for part in (new.canary, new.shadow):
            if part is not None:
                m.model_info.labels(name, part.bound.version, part.bound.slot).set(1)
                m.traffic_weight.labels(part.bound.slot, part.bound.version).set(weight if part is new.canary else 1.0)
        state = new.routing.state
        # The rollout's fingerprint, not its id: the id salts the canary hash and /metrics is open.
        m.rollout_info.labels(state.fingerprint or "-", state.mode, state.stage or "-", state.challenger or "-").set(1)
        m.swaps.inc()

    def poll_safely(self) -> bool:
        """``poll``, with errors logged and counted instead of raised."""
        try:
            swapped = self.poll()
        except Exception as exc:
            self._failures += 1
            self.metrics.count_error("reload")
            self._refused(exc)
            if self._failures == 1:
                log.exception("polling the registry or loading the champion failed; the current model keeps serving")
            else:
                log.warning("polling or loading the champion failed again (%d in a row): %s", self._failures, exc)
            return False
        self._failures = 0
        return swapped

    def _refused(self, exc: Exception) -> None:
        """A version refused for its signature or files: counted apart (the alert
        DriftloopModelRefused fires on it) and logged as an error at every poll, not only the first."""
        if isinstance(exc, ModelRefused):
            self.metrics.count_error("model_refused")
            log.error("%s", exc)

    def next_delay(self) -> float:
        """Seconds until the next poll: ``interval_s``, doubled per failure in a row up to the backoff cap."""
        if self._failures == 0:
            return self.interval_s
        # The exponent is capped: 2.0**1024 overflows, and the cap is far past MAX_BACKOFF_S anyway.
        return min(self.interval_s * 2.0 ** min(self._failures, 64), max(self.interval_s, MAX_BACKOFF_S))

    def start(self) -> None:
        """Poll in a background thread until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="routing-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread (waits for a poll under way)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.next_delay()):
            self.poll_safely()
