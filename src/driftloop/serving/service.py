"""The prediction service: texts in, typed answers out, with no HTTP in between.

It routes each request to the champion or the canary by the routing snapshot, predicts inline,
through the slot's micro-batcher or in a worker thread, writes the prediction log before it
answers, mirrors the request to the shadow, and records feedback labels against the answers
they judge. The HTTP handlers (:mod:`driftloop.serving.handlers`) parse, call it and render.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from anyio.to_thread import run_sync

from driftloop.adapters import tracing
from driftloop.adapters.logstore import LogRoot
from driftloop.adapters.predlog import FeedbackLog, PredictionLog
from driftloop.config.settings import ServingSettings
from driftloop.core.types import Prediction
from driftloop.serving.cache import predict_texts
from driftloop.serving.ids import new_request_id
from driftloop.serving.limits import InFlight, Overloaded
from driftloop.serving.metrics import ServingMetrics
from driftloop.serving.poller import RoutingPoller
from driftloop.serving.shadow import ShadowRunner
from driftloop.serving.snapshot import RoutingSnapshot, Slot

log = logging.getLogger(__name__)

# Batches up to this size are predicted on the event loop; larger ones in a worker thread so
# that small requests keep flowing between them.
INLINE_TEXTS = 8

_NO_SPAN = tracing.Span()


class NotReady(Exception):
    """No model is loaded yet: there is nothing to answer with."""


@dataclass(slots=True)  # not frozen: a frozen dataclass is built several times slower, once per request
class Answered:
    """A request answered by one slot: one request id, prediction and token count per text."""

    slot: Slot
    ids: list[str]
    predictions: list[Prediction]
    tokens: list[int]

    @property
    def model_name(self) -> str:
        """The registered model's name."""
        return self.slot.loaded.ref.name

    @property
    def model_version(self) -> str:
        """The version that answered."""
        return self.slot.bound.version

    @property
    def slot_name(self) -> str:
        """The slot that answered: champion or canary."""
        return self.slot.bound.slot


@dataclass(frozen=True, slots=True)
class ModelFailed:
    """The champion failed to predict the request's texts (a failing canary is answered for by the champion)."""

    slot: Slot
    texts: int
    error: Exception

    @property
    def model_version(self) -> str:
        """The version that failed."""
        return self.slot.bound.version

    @property
    def slot_name(self) -> str:
        """The slot that failed."""
        return self.slot.bound.slot


class PastAnswer(NamedTuple):
    """What a replica remembers of one answered text: who answered and what."""

    model_version: str
    slot: str
    intent: str


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    """A feedback label: whether it reached the log, and the answer it judges when remembered."""

    request_id: str
    label: str
    recorded: bool
    answer: PastAnswer | None

    @property
    def correct(self) -> bool | None:
        """Whether the remembered answer was the label (None: not remembered)."""
        return None if self.answer is None else self.answer.intent == self.label


class AnswerMemory:
    """The newest answers by request id, so a feedback label can be scored against the answer
    it judges (``driftloop_feedback_labels_total``) without reading the log."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._by_id: dict[str, tuple[str, str, str]] = {}
        self._order: deque[str] = deque()

    def add(self, ids: list[str], version: str, slot: str, predictions: list[Prediction]) -> None:
        """Remember the answers of one request (the oldest beyond ``capacity`` are forgotten)."""
        by_id, order = self._by_id, self._order
        for rid, p in zip(ids, predictions, strict=True):
            by_id[rid] = (version, slot, p.intent)
            order.append(rid)
        while len(order) > self.capacity:
            by_id.pop(order.popleft(), None)

    def get(self, request_id: str) -> PastAnswer | None:
        """The answer given under ``request_id``, when it is still remembered."""
        found = self._by_id.get(request_id)
        return PastAnswer._make(found) if found is not None else None


class PredictionService:
    """Answers texts with the models of the poller's current snapshot and keeps the records.

    Between :meth:`open` and :meth:`close` it holds the prediction and feedback logs under
    ``log_root`` and runs the shadow thread. Every answer is in the prediction log before it
    is returned; a failing canary is answered for by the champion, a failing champion is a
    :class:`ModelFailed`. It counts what it answers (200 and 500 in ``driftloop_requests``, the
    per-slot series); refusals before a request reaches it are the caller's to count.
    """

    predictions_log: PredictionLog
    feedback_log: FeedbackLog

    def __init__(
        self,
        cfg: ServingSettings,
        poller: RoutingPoller,
        metrics: ServingMetrics,
        log_root: LogRoot,
        redact: Callable[[str], str] | None = None,
    ):
        self.cfg = cfg
        self.redact = redact  # applied by the log writers to every text before it is written
        self.poller = poller
        self.metrics = metrics
        self.log_root = log_root
        self.answers = AnswerMemory(cfg.feedback_memory)
        # Texts that wait (in a worker thread or a micro-batcher): bounded, past it Overloaded.
        # Inline requests never wait, so they never count and are never refused.
        self.in_flight = InFlight(cfg.max_in_flight)
        self.last_activity = 0.0  # when the last /predict call was answered (time.monotonic)
        self.shadow = ShadowRunner(
            metrics, cfg.shadow_queue, last_activity=self._last_activity, min_rate=cfg.shadow_min_rate
        )

    def _last_activity(self) -> float:
        return self.last_activity

    def mark_active(self) -> None:
        """A request was just answered: the shadow thread yields to user traffic."""
        self.last_activity = time.monotonic()

    def open(self) -> None:
        """Open the logs and start the shadow thread."""
        self.predictions_log = PredictionLog(self.log_root, self.cfg.fsync_interval_s, redact=self.redact)
        self.feedback_log = FeedbackLog(self.log_root, self.cfg.fsync_interval_s, redact=self.redact)
        self.shadow.start(self.predictions_log)

    def close(self) -> None:
        """Answer the mirrored requests still queued, then close the logs."""
        self.shadow.stop()
        self.predictions_log.close()
        self.feedback_log.close()

    def snapshot(self) -> RoutingSnapshot | None:
        """The routing now (None before a model is loaded); read it once per request."""
        return self.poller.serving

    async def predict(
        self,
        texts: list[str],
        snap: RoutingSnapshot | None = None,
        *,
        caller_id: bytes | None = None,
        started: float | None = None,
        span: tracing.Span = _NO_SPAN,
    ) -> Answered | ModelFailed:
        """Answer ``texts`` with ``snap`` (default: the current snapshot; :class:`NotReady`
        without one). ``caller_id`` keeps a caller on one side of a canary; ``started`` is when
        the request began (its latency's start, default now); ``span`` gets the canary's failure.
        Raises :class:`~driftloop.serving.limits.Overloaded` when texts that would wait (not
        inline) pass ``serving.max_in_flight``, or the slot's micro-batcher is full."""
        if started is None:
            started = time.perf_counter()
        if snap is None:
            snap = self.poller.serving
            if snap is None:
                raise NotReady("no model loaded yet")
        part = snap.canary if snap.canary is not None and snap.pick_canary(caller_id) else snap.champion
        # A model may lower the inline limit: a transformer's forward pass costs milliseconds
        # even for one text, which would stall every other request on the event loop. (Decided
        # by the model first picked, and kept when the champion answers for a failed canary.)
        inline = len(texts) <= getattr(part.loaded.model, "inline_texts", INLINE_TEXTS)
        waits = not inline
        if waits and not self.in_flight.enter(len(texts)):
            gate = self.in_flight
            raise Overloaded(f"{gate.texts} texts in flight (serving.max_in_flight {gate.limit})")
        try:
            while True:
                ids = [new_request_id() for _ in texts]
                try:
                    predictions, tokens = await self._predict(part, texts, inline)
                    break
                except Overloaded:
                    raise  # not the model's failure: the caller answers 503 (nothing was predicted)
                except Exception as exc:  # noqa: BLE001  logged in _record_failure; answered (500) or by the champion
                    self._record_failure(part, ids, texts, started, exc)
                    if part is snap.champion:
                        self.metrics.count_request("predict", 500, part.bound.version, part.bound.slot)
                        return ModelFailed(part, len(texts), exc)
                    # A failing canary costs the caller nothing: the champion answers instead (the
                    # failure is logged against the canary, which is what the rollout analysis reads).
                    span.event("canary failed", {"driftloop.model_version": part.bound.version}, exc=exc)
                    part = snap.champion
        finally:
            if waits:
                self.in_flight.leave(len(texts))
        elapsed = time.perf_counter() - started
        self._record_answer(part, ids, texts, predictions, tokens, elapsed)
        if snap.shadow is not None:
            self.shadow.submit(snap.shadow, ids, texts, predictions)
        return Answered(part, ids, predictions, tokens)

    @staticmethod
    async def _predict(part: Slot, texts: list[str], inline: bool) -> tuple[list[Prediction], list[int]]:
        if inline:
            return predict_texts(part.loaded.model, texts)
        if part.batcher is not None:
            return await part.batcher.submit(texts)
        return await run_sync(predict_texts, part.loaded.model, texts)

    def _record_answer(
        self,
        part: Slot,
        ids: list[str],
        texts: list[str],
        predictions: list[Prediction],
        tokens: list[int],
        elapsed: float,
    ) -> None:
        bound = part.bound
        try:
            self.predictions_log.write_batch(
                ids, texts, predictions, bound.version, elapsed * 1000.0, tokens, bound.slot
            )
        except OSError:
            # Answering matters more than the record; the counter makes the gap visible.
            log.exception("writing the prediction log failed")
            self.metrics.count_error("log_write")
        self.answers.add(ids, bound.version, bound.slot, predictions)
        bound.ok.inc()
        bound.observe(predictions, tokens, elapsed)

    def _record_failure(self, part: Slot, ids: list[str], texts: list[str], started: float, exc: Exception) -> None:
        bound = part.bound
        log.exception("%s (%s) failed to predict a batch of %d", part.loaded.ref, bound.slot, len(texts))
        bound.failed.inc(len(texts))
        self.metrics.count_error("predict")
        try:
            self.predictions_log.write_errors(
                ids,
                texts,
                bound.version,
                (time.perf_counter() - started) * 1000.0,
                bound.slot,
                f"{type(exc).__name__}: {exc}",
            )
        except OSError:
            log.exception("writing the prediction log failed")
            self.metrics.count_error("log_write")

    def record_feedback(self, request_id: str, label: str) -> FeedbackOutcome:
        """Write a feedback label to the log and score it against the answer it judges, when
        remembered (``recorded`` is False when the log could not take it)."""
        try:
            self.feedback_log.write(request_id, label)
        except OSError:
            log.exception("writing the feedback log failed")
            self.metrics.count_error("log_write")
            return FeedbackOutcome(request_id, label, False, None)
        self.metrics.feedback.inc()
        answer = self.answers.get(request_id)
        if answer is not None:
            self.metrics.feedback_labels.labels(
                answer.model_version, answer.slot, "true" if answer.intent == label else "false"
            ).inc()
        return FeedbackOutcome(request_id, label, True, answer)
