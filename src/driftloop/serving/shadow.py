"""Shadow mode: the challenger answers a mirrored copy of each request, off the user's path."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from driftloop.adapters.predlog import PredictionLog
from driftloop.core.types import SLOT_SHADOW, Prediction
from driftloop.serving.cache import token_counter
from driftloop.serving.metrics import ServingMetrics
from driftloop.serving.snapshot import Slot

log = logging.getLogger(__name__)

_Mirrored = tuple[Slot, list[str], list[str], list[Prediction]]


def _never_active() -> float:
    return 0.0


class ShadowRunner:
    """Answers mirrored requests with the shadow model in a thread of its own, after the user's
    response is on its way, yielding to user requests.

    Shadow predictions cost CPU that user requests would otherwise get, so the thread waits
    until no request has been answered for ``quiet_s`` (the server has a gap in its traffic);
    under continuous load it still answers ``min_rate`` mirrored requests a second, so a shadow
    stage gathers samples at a bounded cost. Measured with an always-on shadow thread: a
    saturated server lost 45% of its throughput. When the queue is full, requests are not
    mirrored, and counted (``driftloop_shadow_dropped_total``).
    """

    def __init__(
        self,
        metrics: ServingMetrics,
        max_queue: int = 256,
        *,
        last_activity: Callable[[], float] = _never_active,
        min_rate: float = 50.0,
        quiet_s: float = 0.002,
    ):
        self._metrics = metrics
        self._queue: queue.Queue[_Mirrored | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._last_activity = last_activity
        self._min_interval = 1.0 / min_rate if min_rate > 0 else None
        self._quiet_s = quiet_s
        self._stopping = False

    def submit(self, shadow: Slot, ids: list[str], texts: list[str], answers: list[Prediction]) -> None:
        """Mirror one answered request to ``shadow`` (dropped and counted when the queue is full)."""
        try:
            self._queue.put_nowait((shadow, ids, texts, answers))
        except queue.Full:
            self._metrics.shadow_dropped.inc()

    def start(self, predictions: PredictionLog) -> None:
        """Answer mirrored requests in a thread, writing the shadow's answers to ``predictions``."""
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, args=(predictions,), name="shadow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Answer what is queued, then stop (no mirrored request is lost on a clean shutdown)."""
        if self._thread is not None:
            self._stopping = True
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _yield_to_users(self, last: float) -> None:
        while not self._stopping:
            now = time.monotonic()
            if now - self._last_activity() >= self._quiet_s:
                return  # a gap in the traffic
            if self._min_interval is not None and now >= last + self._min_interval:
                return  # the guaranteed minimum rate
            time.sleep(self._quiet_s)

    def _loop(self, predictions: PredictionLog) -> None:
        last = time.monotonic()
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._yield_to_users(last)
            last = time.monotonic()
            self._answer(predictions, *item)

    def _answer(
        self, predictions_log: PredictionLog, shadow: Slot, ids: list[str], texts: list[str], answers: list[Prediction]
    ) -> None:
        bound = shadow.bound
        model = shadow.loaded.model
        started = time.perf_counter()
        try:
            predictions = model.predict(texts)
            count = token_counter(model)
            tokens = [count(t) for t in texts]
        except Exception as exc:  # noqa: BLE001  a failing shadow is logged and counted, never raised
            elapsed = time.perf_counter() - started
            bound.failed.inc(len(texts))
            error = f"{type(exc).__name__}: {exc}"
            self._write(
                lambda: predictions_log.write_errors(ids, texts, bound.version, elapsed * 1000.0, SLOT_SHADOW, error)
            )
            return
        elapsed = time.perf_counter() - started
        self._write(
            lambda: predictions_log.write_batch(
                ids, texts, predictions, bound.version, elapsed * 1000.0, tokens, SLOT_SHADOW
            )
        )
        bound.ok.inc()
        bound.observe(predictions, tokens, elapsed)
        # Best effort: a shadow model that answers a different number of rows must not stop this thread.
        comparisons = self._metrics.shadow_comparisons
        for mine, theirs in zip(predictions, answers, strict=False):
            comparisons.labels(bound.version, "true" if mine.intent == theirs.intent else "false").inc()

    def _write(self, write: Callable[[], None]) -> None:
        try:
            write()
        except Exception:
            log.exception("writing shadow predictions to the log failed")
            self._metrics.count_error("log_write")
