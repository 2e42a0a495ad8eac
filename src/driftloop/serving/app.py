"""The serving app: the registry's champion behind ``/predict``, with feedback, health and metrics.

Replicas are stateless: which version serves is decided in the registry (the ``champion``
alias); each replica polls it and converges. Every answered prediction is in the prediction log
before its response is sent, and every feedback label in the feedback log.

The hot path is kept lean on purpose (the model itself costs ~0.3 ms a text): the body is parsed
by hand instead of through FastAPI's model binding, a few texts are predicted inline on the event
loop (a thread hop costs more than the prediction), responses are pre-serialised, and the metric
children of the serving version are bound once per model swap.

The contract is the behaviour: /openapi.json states exactly what the parsers take (one of
``text``/``texts``, non-empty texts without NUL within the configured limits, UTF-8 JSON only)
and every refusal, each a 4xx naming its field; tests/integration/test_http_contract.py holds
the server to it with schemathesis and hostile bodies.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import queue
import random
import re
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from driftloop.adapters import tracing
from driftloop.adapters.predlog import FeedbackLog, PredictionLog
from driftloop.config.settings import ServingSettings, TracingSettings
from driftloop.core.errors import InputError
from driftloop.core.types import (
    MODE_AB,
    MODE_BLUEGREEN,
    MODE_CANARY,
    MODE_SHADOW,
    SLOT_CANARY,
    SLOT_CHAMPION,
    SLOT_SHADOW,
    ModelRef,
    Prediction,
    Routing,
)
from driftloop.models.families import TextClassifier

log = logging.getLogger(__name__)

# Batches up to this size are predicted on the event loop; larger ones in a worker thread so
# that small requests keep flowing between them.
INLINE_TEXTS = 8
MAX_ID_CHARS = 128
MAX_LABEL_CHARS = 200
FEEDBACK_BODY_LIMIT = 64 * 1024
# Longest wait between polls while the registry or a load keeps failing. A poll loop, not a retry
# of one call (driftloop.core.retry): a replica keeps serving what it has and polls for as long as it runs.
MAX_BACKOFF_S = 30.0
_JSON = "application/json"
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# json.dumps of a str is one call into the C escaper (ensure_ascii: lone surrogates stay safe).
_q = json.dumps


class ModelSource(Protocol):
    """Where the serving versions come from: the registry, or a fake in unit tests."""

    def routing(self) -> Routing: ...

    def load(self, ref: ModelRef) -> TextClassifier: ...


@dataclass(frozen=True)
class LoadedModel:
    ref: ModelRef
    model: TextClassifier
    loaded_at: float


def _count_words(text: str) -> int:
    return len(text.split())


def token_counter(model: Any) -> Callable[[str], int]:
    """How many tokens a text is for ``model``: its own count when it has one (a family with a
    real tokenizer counts what it sees), whitespace-separated words otherwise."""
    return getattr(model, "count_tokens", None) or _count_words


def predict_texts(model: Any, texts: list[str]) -> tuple[list[Prediction], list[int]]:
    """The model's predictions for ``texts`` and each text's token count."""
    count = token_counter(model)
    return model.predict(texts), [count(t) for t in texts]


# -- the HTTP contract: request schemas (the bodies are parsed by hand, see _parse_*) and the ---
# -- response shapes -----------------------------------------------------------------------------

# What str.isspace() calls whitespace, as a regex class every dialect reads alike (Python's \s
# matches these, ECMA's \s differs: it has U+FEFF and lacks U+001C-U+001F and U+0085). A text
# of only these is refused, so the schema's pattern says so in these exact characters.
SPACE_CLASS = r"\t-\r\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A text the server takes: no NUL (U+0000) anywhere, at least one character that is not
# whitespace. (Length limits are minLength/maxLength beside it.)
TEXT_PATTERN = rf"^[^\u0000]*[^\u0000{SPACE_CLASS}][^\u0000]*$"


def _text_schema(max_chars: int, description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_chars,
        "pattern": TEXT_PATTERN,
        "description": f"{description}: 1 to {max_chars} characters, not only whitespace, no NUL (U+0000)",
    }


def request_schemas(cfg: ServingSettings) -> dict[str, dict[str, Any]]:
    """The JSON Schemas of the request bodies, exactly as :func:`parse_predict` and
    :func:`parse_feedback` judge them (OpenAPI components; the limits come from ``cfg``)."""
    text = _text_schema(cfg.max_text_chars, "one text to classify")
    return {
        "OneText": {
            "title": "OneText",
            "type": "object",
            "required": ["text"],
            "additionalProperties": False,
            "properties": {"text": text},
            "examples": [{"text": "my card has not arrived yet"}],
        },
        "ManyTexts": {
            "title": "ManyTexts",
            "type": "object",
            "required": ["texts"],
            "additionalProperties": False,
            "properties": {
                "texts": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": cfg.max_batch,
                    "items": _text_schema(cfg.max_text_chars, "a text"),
                    "description": f"several texts, 1 to {cfg.max_batch} (serving.max_batch)",
                }
            },
            "examples": [{"texts": ["I lost my card", "what is the exchange rate?"]}],
        },
        "PredictRequest": {
            "title": "PredictRequest",
            "description": "Exactly one of `text` (one text) or `texts` (a batch); no other field.",
            "oneOf": [{"$ref": "#/components/schemas/OneText"}, {"$ref": "#/components/schemas/ManyTexts"}],
        },
        "FeedbackRequest": {
            "title": "FeedbackRequest",
            "type": "object",
            "required": ["request_id", "label"],
            "additionalProperties": False,
            "properties": {
                "request_id": _text_schema(MAX_ID_CHARS, "the request_id /predict answered with"),
                "label": _text_schema(MAX_LABEL_CHARS, "the true intent; may be one the model does not know yet"),
            },
            "examples": [{"request_id": "3f0c2a9e8d6b4c1fa7e5d2b9c8a1f0e4", "label": "card_arrival"}],
        },
    }


class PredictionOut(BaseModel):
    request_id: str = Field(description="server-generated id; send it back with /feedback")
    intent: str
    confidence: float


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[PredictionOut]


class FeedbackAccepted(BaseModel):
    status: str = Field(description='always "accepted"')
    request_id: str = Field(description="the request_id as recorded (surrounding whitespace dropped)")


class Health(BaseModel):
    status: str = Field(description='always "ok"')
    model_version: str | None = Field(description="the serving version; null before one is loaded")


class Ready(BaseModel):
    status: str = Field(description='"ready"')
    model: str
    model_version: str


class NotReady(BaseModel):
    status: str = Field(description='"not ready"')
    detail: str


class Problem(BaseModel):
    field: str = Field(
        description="the field, header or part of the request concerned: text, texts[3], "
        "label, body, Content-Type, Authorization, model"
    )
    message: str


class ErrorResponse(BaseModel):
    detail: str = Field(description="every problem, each prefixed with the field it concerns")
    errors: list[Problem] = Field(description="the same problems as {field, message}")


class BadRequest(Exception):
    """A request the client must fix; ``problems`` are (field, message) pairs."""

    def __init__(self, status: int, kind: str, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.status = status
        self.kind = kind
        self.problems = problems

    def body(self) -> bytes:
        return json.dumps(
            {"detail": str(self), "errors": [{"field": f, "message": m} for f, m in self.problems]}
        ).encode()

    def response(self) -> Response:
        return Response(self.body(), status_code=self.status, media_type=_JSON)


# -- metrics -------------------------------------------------------------------------------------


class ServingMetrics:
    """The app's Prometheus series, in a registry of its own (two apps in one process, as in the
    tests, never share counts). Everything a model answers is labelled by its version and slot
    (champion, canary, shadow), so a rollout can be watched per slot."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        vs = ["model_version", "slot"]
        self.requests = Counter(
            "driftloop_requests",
            "HTTP requests by endpoint, status, model version and slot",
            ["endpoint", "status", *vs],
            registry=r,
        )
        self.latency = Histogram(
            "driftloop_predict_latency_seconds",
            "Time to answer /predict inside the app (shadow: the challenger's "
            "own prediction time), by model version and slot",
            vs,
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.predictions = Counter(
            "driftloop_predictions", "Predictions by intent, model version and slot", ["intent", *vs], registry=r
        )
        self.confidence = Histogram(
            "driftloop_prediction_confidence",
            "Confidence of the predicted intent, by model version and slot",
            vs,
            registry=r,
            buckets=tuple(round(0.1 * i, 1) for i in range(1, 11)),
        )
        self.low_confidence = Counter(
            "driftloop_low_confidence", "Predictions below the low-confidence threshold", vs, registry=r
        )
        self.tokens = Histogram(
            "driftloop_request_tokens",
            "Tokens per /predict request (all its texts)",
            vs,
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
        )
        self.batch_texts = Histogram(
            "driftloop_batch_texts",
            "Texts per forward pass of the micro-batcher (concurrent requests "
            "predicted together), by model version and slot",
            vs,
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.errors = Counter("driftloop_errors", "Errors by kind", ["kind"], registry=r)
        self.predict_errors = Counter(
            "driftloop_predict_errors", "Texts a model failed to predict, by model version and slot", vs, registry=r
        )
        self.feedback = Counter("driftloop_feedback", "Feedback labels received", registry=r)
        self.feedback_labels = Counter(
            "driftloop_feedback_labels",
            "Feedback labels matched to the answer they judge",
            [*vs, "correct"],
            registry=r,
        )
        self.model_info = Gauge(
            "driftloop_model_info",
            "The model versions loaded for traffic (value 1)",
            ["model_name", "model_version", "slot"],
            registry=r,
        )
        self.traffic_weight = Gauge(
            "driftloop_traffic_weight",
            "Share of user traffic each slot answers (shadow: share mirrored)",
            ["slot", "model_version"],
            registry=r,
        )
        self.rollout_info = Gauge(
            "driftloop_rollout_info",
            "The rollout state this replica routes by",
            ["rollout_id", "mode", "stage", "challenger"],
            registry=r,
        )
        self.shadow_comparisons = Counter(
            "driftloop_shadow_comparisons",
            "Shadow predictions compared with the champion's answer",
            ["model_version", "agree"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "driftloop_shadow_dropped", "Requests not mirrored because the shadow queue was full", registry=r
        )
        self.drift_share = Gauge(
            "driftloop_drift_share", "Share of drift signals that fired in the latest monitoring run", registry=r
        )
        self.drift_detected = Gauge(
            "driftloop_drift_detected", "1 when the latest monitoring run confirmed drift", registry=r
        )
        self.swaps = Counter("driftloop_model_swaps", "Routing changes applied (champion or rollout)", registry=r)

    def bind(self, ref: ModelRef, slot: str, low_confidence: float) -> _Bound:
        return _Bound(self, ref.version, slot, low_confidence)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Bound:
    """The children of one (model version, slot)'s series, looked up once instead of per request."""

    def __init__(self, metrics: ServingMetrics, version: str, slot: str, low_confidence: float):
        self.version = version
        self.slot = slot
        self.version_json = _q(version)
        self.low_threshold = low_confidence
        self.ok = metrics.requests.labels("predict", "200", version, slot)
        self.latency = metrics.latency.labels(version, slot)
        self.confidence = metrics.confidence.labels(version, slot)
        self.low = metrics.low_confidence.labels(version, slot)
        self.tokens = metrics.tokens.labels(version, slot)
        self.failed = metrics.predict_errors.labels(version, slot)
        self._predictions = metrics.predictions
        self._by_intent: dict[str, Any] = {}

    def observe(self, predictions: list[Prediction], tokens: list[int], elapsed_s: float) -> None:
        self.latency.observe(elapsed_s)
        self.tokens.observe(sum(tokens))
        for p in predictions:
            child = self._by_intent.get(p.intent)
            if child is None:
                child = self._by_intent[p.intent] = self._predictions.labels(p.intent, self.version, self.slot)
            child.inc()
            self.confidence.observe(p.confidence)
            if p.confidence < self.low_threshold:
                self.low.inc()


class MicroBatcher:
    """Coalesces concurrent ``/predict`` calls to one model into one forward pass.

    A transformer answers 64 texts in one batch in about a quarter of the time of 64 calls of one
    text, and parallel calls only fight over the same cores. So one call at a time runs in a
    worker thread; the requests that arrive meanwhile wait here, and when the model is free it
    takes all of them (up to ``max_texts``) as the next batch. There is no timer: a lone request
    goes at once, and under load the batches form by themselves. A batch that fails is retried
    request by request, so one bad input fails only its own request.
    """

    def __init__(
        self,
        predict: Callable[[list[str]], tuple[list[Prediction], list[int]]],
        max_texts: int,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._predict = predict
        self.max_texts = max_texts
        self._on_batch = on_batch
        self._pending: deque[tuple[list[str], asyncio.Future]] = deque()
        self._running = False
        self.batches = 0  # forward passes run (tests, and the batch-size metric's count)

    async def submit(self, texts: list[str]) -> tuple[list[Prediction], list[int]]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = [self._pending.popleft()]
                size = len(batch[0][0])
                while self._pending and size + len(self._pending[0][0]) <= self.max_texts:
                    batch.append(self._pending.popleft())
                    size += len(batch[-1][0])
                batch = [(texts, future) for texts, future in batch if not future.done()]  # left
                if not batch:
                    continue
                texts = [t for part, _ in batch for t in part]
                self.batches += 1
                if self._on_batch is not None:
                    self._on_batch(len(texts))
                try:
                    predictions, tokens = await run_in_threadpool(self._predict, texts)
                except Exception as exc:  # noqa: BLE001  a model's failure is the waiting requests' answer
                    if len(batch) == 1:
                        _settle(batch[0][1], exc=exc)
                        continue
                    for part, future in batch:  # find the culprit: each request on its own
                        try:
                            _settle(future, await run_in_threadpool(self._predict, part))
                        except Exception as exc:  # noqa: BLE001  as above, for this request alone
                            _settle(future, exc=exc)
                    continue
                at = 0
                for part, future in batch:
                    _settle(future, (predictions[at : at + len(part)], tokens[at : at + len(part)]))
                    at += len(part)
        finally:
            self._running = False
            if self._pending:  # left behind by an exception that ended the loop: start over
                self._running = True
                asyncio.get_running_loop().create_task(self._drain())


def _settle(future: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():  # the caller went away (cancelled)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


@dataclass(frozen=True)
class _Slot:
    """One loaded model in one slot, with its metric children and its micro-batcher."""

    loaded: LoadedModel
    bound: _Bound
    batcher: MicroBatcher | None = field(default=None, compare=False)


_HASH_SPACE = 1 << 32


@dataclass(frozen=True)
class _Snapshot:
    """Everything routing needs, swapped as one reference so a request never sees a mix."""

    routing: Routing
    champion: _Slot
    canary: _Slot | None  # the challenger answering a share of callers (canary, A/B)
    shadow: _Slot | None  # the challenger answering a mirrored copy of every request
    standby: LoadedModel | None  # blue-green: loaded and warm, no traffic yet
    complete: bool  # False while the challenger could not be loaded (retried)

    def pick_canary(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether this request goes to the canary: sticky per ``X-Caller-Id`` (the key hashed
        with the rollout id, so a caller keeps its side for the rollout's whole life, and stays
        on the canary as the weight grows), a fair coin weighted by the share otherwise."""
        weight = self.routing.state.weight
        for name, value in headers:
            if name == b"x-caller-id" and value:
                salt = self.routing.state.rollout_id.encode()
                return zlib.crc32(salt + b"\x00" + value) < weight * _HASH_SPACE
        return random.random() < weight


# -- the model holder and its reloader -----------------------------------------------------------


class ModelHolder:
    """Holds the serving models and keeps them at the source's desired routing.

    ``poll`` reads the champion and the rollout state (one registry call), loads and warms any
    version it has not got yet, then swaps one attribute: requests read it once, so each is
    answered wholly by one snapshot. The champion, the challenger and the previous champion stay
    loaded, so promoting or rolling back is a swap without a load. A background thread polls
    every ``interval_s``; after a failure it backs off (doubling, up to :data:`MAX_BACKOFF_S`)
    and the current snapshot keeps serving. A challenger that cannot be loaded never stops the
    champion: it serves alone until the challenger loads.
    """

    def __init__(
        self,
        source: ModelSource,
        metrics: ServingMetrics,
        interval_s: float,
        low_confidence: float = 0.5,
        micro_batch_texts: int = 64,
    ):
        self.micro_batch_texts = micro_batch_texts
        self.source = source
        self.metrics = metrics
        self.interval_s = interval_s
        self.low_confidence = low_confidence
        self.serving: _Snapshot | None = None
        self._models: dict[ModelRef, LoadedModel] = {}
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

    def _model(self, ref: ModelRef) -> LoadedModel:
        loaded = self._models.get(ref)
        if loaded is None:
            started = time.perf_counter()
            model = self.source.load(ref)
            # Warm-up: builds the model's lazy state here rather than on a request.
            model.predict(["warm up"])
            token_counter(model)("warm up")
            loaded = LoadedModel(ref, model, time.time())
            log.info("loaded %s in %.2fs", ref, time.perf_counter() - started)
        return loaded

    def poll(self) -> bool:
        """One check of the desired routing; True when a new snapshot was swapped in. Raises on
        errors reading the source or loading the champion."""
        with self._poll_lock:
            routing = self.source.routing()
            old = self.serving
            if routing.champion is None:
                if old is not None and not self._warned_no_champion:
                    log.warning("the source has no champion; %s keeps serving", old.champion.loaded.ref)
                    self._warned_no_champion = True
                return False
            self._warned_no_champion = False
            if old is not None and old.complete and old.routing == routing:
                return False
            champion = self._model(routing.champion)
            challenger = None
            complete = True
            if routing.challenger is not None and routing.challenger != routing.champion:
                try:
                    challenger = self._model(routing.challenger)
                    self._challenger_failures = 0
                except Exception as exc:
                    complete = False
                    self._challenger_failures += 1
                    self.metrics.errors.labels("load_challenger").inc()
                    if self._challenger_failures == 1:
                        log.exception("loading challenger %s failed; the champion serves alone", routing.challenger)
                    else:
                        log.warning("loading challenger %s failed again: %s", routing.challenger, exc)
            if old is not None and not old.complete and not complete and old.routing == routing:
                return False
            new = self._snapshot(routing, champion, challenger, complete)
            keep = {champion.ref}
            if challenger is not None:
                keep.add(challenger.ref)
            if old is not None:
                keep.add(old.champion.loaded.ref)  # an instant switch back
            self._models = {
                r: m
                for r, m in {
                    **self._models,
                    champion.ref: champion,
                    **({challenger.ref: challenger} if challenger else {}),
                }.items()
                if r in keep
            }
            self.serving = new
            self._publish(old, new)
            if old is None or old.champion.loaded.ref != champion.ref:
                log.info("now serving %s (was %s)", champion.ref, old.champion.loaded.ref if old else None)
            if old is None or old.routing.state != routing.state:
                log.info("routing: %s", routing.state)
            return True

    def _snapshot(
        self, routing: Routing, champion: LoadedModel, challenger: LoadedModel | None, complete: bool
    ) -> _Snapshot:
        def slot(loaded: LoadedModel, name: str) -> _Slot:
            batcher = None
            if self.micro_batch_texts > 0:
                batcher = MicroBatcher(
                    functools.partial(predict_texts, loaded.model),
                    self.micro_batch_texts,
                    self.metrics.batch_texts.labels(loaded.ref.version, name).observe,
                )
            return _Slot(loaded, self.metrics.bind(loaded.ref, name, self.low_confidence), batcher)

        mode = routing.state.mode
        canary = shadow = standby = None
        if challenger is not None:
            if mode in (MODE_CANARY, MODE_AB) and routing.state.weight > 0:
                canary = slot(challenger, SLOT_CANARY)
            elif mode == MODE_SHADOW:
                shadow = slot(challenger, SLOT_SHADOW)
            elif mode == MODE_BLUEGREEN:
                standby = challenger
        return _Snapshot(routing, slot(champion, SLOT_CHAMPION), canary, shadow, standby, complete)

    def _publish(self, old: _Snapshot | None, new: _Snapshot) -> None:
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
        m.rollout_info.labels(state.rollout_id or "-", state.mode, state.stage or "-", state.challenger or "-").set(1)
        m.swaps.inc()

    def poll_safely(self) -> bool:
        """``poll``, with errors logged and counted instead of raised."""
        try:
            swapped = self.poll()
        except Exception as exc:
            self._failures += 1
            self.metrics.errors.labels("reload").inc()
            if self._failures == 1:
                log.exception("polling the registry or loading the champion failed; the current model keeps serving")
            else:
                log.warning("polling or loading the champion failed again (%d in a row): %s", self._failures, exc)
            return False
        self._failures = 0
        return swapped

    def next_delay(self) -> float:
        if self._failures == 0:
            return self.interval_s
        return min(self.interval_s * 2**self._failures, max(self.interval_s, MAX_BACKOFF_S))

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="routing-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.next_delay()):
            self.poll_safely()


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
        log_write: Callable[..., None],
        metrics: ServingMetrics,
        max_queue: int = 256,
        *,
        last_activity: Callable[[], float] = lambda: 0.0,
        min_rate: float = 50.0,
        quiet_s: float = 0.002,
    ):
        self._write = log_write
        self._metrics = metrics
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._last_activity = last_activity
        self._min_interval = 1.0 / min_rate if min_rate > 0 else None
        self._quiet_s = quiet_s
        self._stopping = False

    def submit(self, shadow: _Slot, ids: list[str], texts: list[str], answers: list[Prediction]) -> None:
        try:
            self._queue.put_nowait((shadow, ids, texts, answers))
        except queue.Full:
            self._metrics.shadow_dropped.inc()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
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

    def _loop(self) -> None:
        comparisons = self._metrics.shadow_comparisons
        last = time.monotonic()
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._yield_to_users(last)
            last = time.monotonic()
            shadow, ids, texts, answers = item
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
                self._log(
                    ids, texts, None, bound.version, elapsed * 1000.0, None, SLOT_SHADOW, f"{type(exc).__name__}: {exc}"
                )
                continue
            elapsed = time.perf_counter() - started
            self._log(ids, texts, predictions, bound.version, elapsed * 1000.0, tokens, SLOT_SHADOW, "")
            bound.ok.inc()
            bound.observe(predictions, tokens, elapsed)
            # Best effort: a shadow model that answers a different number of rows must not stop this thread.
            for mine, theirs in zip(predictions, answers, strict=False):
                comparisons.labels(bound.version, "true" if mine.intent == theirs.intent else "false").inc()

    def _log(self, *line: Any) -> None:
        try:
            self._write(*line)
        except Exception:
            log.exception("writing shadow predictions to the log failed")
            self._metrics.errors.labels("log_write").inc()


class _Answers:
    """The newest answers by request id, so a feedback label can be scored against the answer
    it judges (``driftloop_feedback_labels_total``) without reading the log."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._by_id: dict[str, tuple[str, str, str]] = {}
        self._order: deque[str] = deque()

    def add(self, ids: list[str], version: str, slot: str, predictions: list[Prediction]) -> None:
        by_id, order = self._by_id, self._order
        for rid, p in zip(ids, predictions, strict=True):
            by_id[rid] = (version, slot, p.intent)
            order.append(rid)
        while len(order) > self.capacity:
            by_id.pop(order.popleft(), None)

    def get(self, request_id: str) -> tuple[str, str, str] | None:
        return self._by_id.get(request_id)


def _read_monitor_status(path: Path | None, seen: list[float]) -> dict[str, Any] | None:
    """The latest monitoring run's verdict, when its file changed since ``seen[0]``."""
    if path is None:
        return None
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    if seen and seen[0] == mtime:
        return None
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    seen[:] = [mtime]
    return status if isinstance(status, dict) else None


# -- request parsing -----------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        _Repeated: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


class _Disconnected(Exception):
    """The client went away before its body arrived; there is no one to answer."""


_JSON_TYPE = b"application/json"


def _unsupported_type(content_type: bytes | None) -> BadRequest | None:
    """The 415 for a body that is not declared as UTF-8 JSON; None when it is.

    ``application/json``, any case, with ``charset=utf-8`` or no charset: JSON is UTF-8
    (RFC 8259), and a form, a text/plain body or an undeclared one is refused rather than
    guessed at."""
    if content_type == _JSON_TYPE:
        return None  # the usual case: one comparison
    if content_type is None:
        return BadRequest(
            415, "unsupported_media_type", [("Content-Type", "missing; send 'Content-Type: application/json'")]
        )
    shown = _clip(content_type.decode("latin-1"))
    media, _, params = content_type.partition(b";")
    if media.strip().lower() != _JSON_TYPE:
        return BadRequest(
            415, "unsupported_media_type", [("Content-Type", f"{shown!r} is not accepted; send 'application/json'")]
        )
    for param in params.split(b";"):
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"charset" and value.strip().strip(b'"').lower() not in (b"utf-8", b"utf8"):
            return BadRequest(
                415,
                "unsupported_media_type",
                [("Content-Type", f"{shown!r}: the body must be UTF-8 JSON (charset=utf-8)")],
            )
    return None


async def _receive_body(scope: dict[str, Any], receive: Receive, limit: int) -> bytes:
    """The request body from raw ASGI messages: more than ``limit`` bytes is refused (413), and
    so is a body not declared as JSON (415), both before it is read."""
    length = content_type = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"content-type" and content_type is None:
            content_type = value
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _too_large(limit)
    if content_type != _JSON_TYPE:
        refused = _unsupported_type(content_type)
        if refused is not None:
            raise refused
    message = await receive()
    if message["type"] != "http.request":
        raise _Disconnected()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the usual case: the whole body in one message
    chunks, size = [body], len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """A random RFC 4122 version-4 UUID as 32 hex digits, like ``uuid.uuid4().hex``.

    Built from the same 16 random bytes with the version and variant bits set by hand:
    ``uuid.UUID``'s constructor checks cost several times more than the randomness.
    """
    value = (int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR) | _UUID4_SET
    return f"{value:032x}"


# An incoming X-Request-Id is kept when it is this plain (it lands in logs and traces as it is);
# anything else is replaced by a fresh id rather than refused.
_INCOMING_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def http_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The HTTP request's id: the caller's ``X-Request-Id`` when it is plain, else a new one.

    It names the HTTP exchange (the response header, its trace span), not a prediction: each
    text answered gets its own server-made ``request_id`` in the body, the key of /feedback,
    which a caller must not be able to choose."""
    for name, value in headers:
        if name == b"x-request-id":
            if _INCOMING_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()


class MissingApiToken(InputError, RuntimeError):
    """``serving.require_token`` is true and the token's environment variable is unset."""


def read_api_token(cfg: ServingSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token /feedback requires, from the variable ``cfg.api_token_env``.

    None (no token: /feedback is open) only when ``cfg.require_token`` is false; otherwise an
    unset or empty variable raises :class:`MissingApiToken`, so the app refuses to start.
    Surrounding whitespace is dropped: a Secret made from a file often ends in a newline."""
    token = environ.get(cfg.api_token_env, "").strip()
    if token:
        return token
    if cfg.require_token:
        raise MissingApiToken(
            f"serving.require_token is true but ${cfg.api_token_env} is unset or empty: export it "
            f"(a long random secret, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'), "
            f"or set serving.require_token: false to leave /feedback open on a trusted loopback"
        )
    return None


def _bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            return credentials.strip() if scheme.lower() == b"bearer" else b""
    return None


# At most this many problems are listed in one answer (enough to fix; the answer stays small
# however many fields a body has), and a field name is shown up to this many characters.
MAX_PROBLEMS = 10
MAX_FIELD_SHOWN = 64


def _clip(name: str) -> str:
    return name if len(name) <= MAX_FIELD_SHOWN else name[: MAX_FIELD_SHOWN - 3] + "..."


def _too_large(limit: int) -> BadRequest:
    return BadRequest(413, "too_large", [("body", f"larger than the limit of {limit} bytes")])


class _Repeated(dict):
    """A JSON object that named a key more than once (the keys in ``repeated``); json keeps the
    last value silently, the server refuses instead of guessing which was meant."""

    repeated: list[str]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    out = _Repeated(obj)
    out.repeated = sorted({k for k, _ in pairs if k in seen or seen.add(k)})
    return out


# One decoder for every body (json.loads with options builds one per call). Integers are read
# as floats: a valid body holds none, and int() refuses more than 4,300 digits with an error
# about the interpreter (a float just overflows to inf, named as "a number" in its field).
# Nesting deeper than the interpreter's recursion limit raises RecursionError (caught below).
_DECODER = json.JSONDecoder(parse_int=float, object_pairs_hook=_object)


def _parse_json_object(body: bytes, shape: str) -> dict[str, Any]:
    if not body:
        raise BadRequest(400, "invalid_json", [("body", f"empty; expected a JSON object like {shape}")])
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, "invalid_utf8", [("body", f"not valid UTF-8 (byte {exc.start}: {exc.reason})")]) from None
    try:
        value = _DECODER.decode(decoded)
    except RecursionError:
        raise BadRequest(
            400, "invalid_json", [("body", f"nested too deeply to parse; expected a JSON object like {shape}")]
        ) from None
    except ValueError as exc:
        problem = (
            "starts with a byte order mark (U+FEFF); send JSON without one"
            if decoded[:1] == "\ufeff"
            else f"not valid JSON: {exc}"
        )
        raise BadRequest(400, "invalid_json", [("body", problem)]) from None
    if not isinstance(value, dict):
        raise BadRequest(
            422, "invalid_request", [("body", f"expected a JSON object like {shape}, got {_type_name(value)}")]
        )
    if type(value) is _Repeated:
        raise BadRequest(
            422,
            "invalid_request",
            [(_clip(k), "given more than once; send each field once") for k in value.repeated[:MAX_PROBLEMS]],
        )
    return value


def _check_text(field: str, value: Any, max_chars: int, problems: list[tuple[str, str]]) -> None:
    if not isinstance(value, str):
        problems.append((field, f"expected a string, got {_type_name(value)}"))
    elif not value or value.isspace():
        problems.append((field, "must not be empty or only whitespace"))
    elif len(value) > max_chars:
        problems.append((field, f"{len(value)} characters, more than the limit of {max_chars}"))
    elif "\x00" in value:
        # Never language, and no store downstream keeps it (PostgreSQL text, C strings, CSV tools).
        problems.append((field, "contains a NUL character (\\u0000), which a text must not"))


_PREDICT_FIELDS = {"text", "texts"}
_FEEDBACK_FIELDS = {"request_id", "label"}


def _unknown_fields(value: dict[str, Any], known: set[str], expected: str, problems: list[tuple[str, str]]) -> None:
    if not value.keys() <= known:  # the usual case: no unknown field, no set built
        for key in sorted(set(value) - known)[:MAX_PROBLEMS]:
            problems.append((_clip(key), f"unknown field; expected {expected}"))


def parse_predict(body: bytes, cfg: ServingSettings) -> list[str]:
    """The texts of a /predict body, or :class:`BadRequest` naming every offending field."""
    shape = '{"text": "..."} or {"texts": ["...", ...]}'
    value = _parse_json_object(body, shape)
    problems: list[tuple[str, str]] = []
    _unknown_fields(value, _PREDICT_FIELDS, "'text' or 'texts'", problems)
    has_text, has_texts = "text" in value, "texts" in value
    if has_text and has_texts:
        problems.append(("text", "give either 'text' or 'texts', not both"))
    elif not has_text and not has_texts:
        problems.append(("text", f"missing; expected {shape}"))
    texts: list[str] = []
    if has_text and not has_texts:
        _check_text("text", value["text"], cfg.max_text_chars, problems)
        texts = [value["text"]]
    elif has_texts and not has_text:
        raw = value["texts"]
        if not isinstance(raw, list):
            problems.append(("texts", f"expected a list of strings, got {_type_name(raw)}"))
        elif not raw:
            problems.append(("texts", "must hold at least one text"))
        elif len(raw) > cfg.max_batch:
            problems.append(("texts", f"{len(raw)} texts, more than the limit of {cfg.max_batch} per request"))
        else:
            for i, text in enumerate(raw):
                _check_text(f"texts[{i}]", text, cfg.max_text_chars, problems)
                if len(problems) >= MAX_PROBLEMS:
                    break
            texts = raw
    if problems:
        raise BadRequest(422, "invalid_request", problems[:MAX_PROBLEMS])
    return texts


def parse_feedback(body: bytes) -> tuple[str, str]:
    """(request_id, label) of a /feedback body, or :class:`BadRequest`."""
    value = _parse_json_object(body, '{"request_id": "...", "label": "..."}')
    problems: list[tuple[str, str]] = []
    _unknown_fields(value, _FEEDBACK_FIELDS, "'request_id' and 'label'", problems)
    for key, limit in (("request_id", MAX_ID_CHARS), ("label", MAX_LABEL_CHARS)):
        if key not in value:
            problems.append((key, "missing"))
        else:
            _check_text(key, value[key], limit, problems)
    if problems:
        raise BadRequest(422, "invalid_request", problems[:MAX_PROBLEMS])
    return value["request_id"].strip(), value["label"].strip()


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = list(loc[1:] if loc and loc[0] in {"body", "query", "path", "header"} else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


# -- the app -------------------------------------------------------------------------------------


class ServingApp(FastAPI):
    """FastAPI with a direct path for ``POST /predict``.

    Routing, dependency solving and FastAPI's telemetry check cost about as much per request
    as the model does, so the hot endpoint is answered straight from the ASGI call. The
    ``/predict`` route stays registered (the OpenAPI docs, and the answer whenever the direct
    path steps aside) and both share one implementation. The direct path steps aside when any
    middleware was added (CORS, auth, OpenTelemetry's ASGI middleware must see every request)
    or the app runs under a root path.
    """

    fast_predict: Callable[[dict[str, Any], Receive, Send], Awaitable[None]] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if (
            self.fast_predict is not None
            and scope["type"] == "http"
            and scope["path"] == "/predict"
            and scope["method"] == "POST"
            and not self.user_middleware
            and not scope.get("root_path")
        ):
            await self.fast_predict(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    cfg: ServingSettings,
    source: ModelSource,
    log_root: Path,
    *,
    low_confidence: float = 0.5,
    monitor_status: Path | None = None,
    api_token: str | None = None,
) -> ServingApp:
    """The serving app. Nothing happens until it starts: the logs are opened, the champion (and
    a rollout's challenger) loaded and the poller started in its lifespan (a missing or failing
    champion leaves it running but not ready). ``monitor_status`` is the file the monitoring
    flow writes its latest verdict to (exported as the drift gauges).

    ``api_token``: the bearer token /feedback requires; None reads it with
    :func:`read_api_token`, which raises :class:`MissingApiToken` when it is required and unset
    (the app is not built at all). Spans go to whatever :func:`driftloop.adapters.tracing.configure`
    installed (nothing when tracing is off)."""
    token = api_token if api_token is not None else read_api_token(cfg)
    expected_token = token.encode() if token else None
    if expected_token is None:
        log.warning(
            "no API token ($%s unset, serving.require_token false): /feedback accepts anyone", cfg.api_token_env
        )
    metrics = ServingMetrics()
    holder = ModelHolder(source, metrics, cfg.reload_interval_s, low_confidence, cfg.micro_batch_texts)
    answers = _Answers(cfg.feedback_memory)
    # Bodies beyond this cannot be valid: every text escaped at its longest (12 bytes a char,
    # a surrogate pair written as \uXXXX\uXXXX), plus room for the keys.
    body_limit = cfg.max_batch * (cfg.max_text_chars * 12 + 8) + 1024
    logs: dict[str, Any] = {}
    status_seen: list[float] = []

    def write_shadow(ids, texts, predictions, version, latency_ms, tokens, slot, error) -> None:
        if error:
            logs["predictions"].write_errors(ids, texts, version, latency_ms, slot, error)
        else:
            logs["predictions"].write_batch(ids, texts, predictions, version, latency_ms, tokens, slot)

    activity = [0.0]  # when the last /predict call was answered (time.monotonic)
    shadow_runner = ShadowRunner(
        write_shadow, metrics, cfg.shadow_queue, last_activity=lambda: activity[0], min_rate=cfg.shadow_min_rate
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs["predictions"] = PredictionLog(log_root, cfg.fsync_interval_s)
        logs["feedback"] = FeedbackLog(log_root, cfg.fsync_interval_s)
        shadow_runner.start()
        await asyncio.to_thread(holder.poll_safely)
        holder.start()
        try:
            yield
        finally:
            holder.stop()
            shadow_runner.stop()
            logs["predictions"].close()
            logs["feedback"].close()

    app = ServingApp(
        title="driftloop serving",
        lifespan=lifespan,
        description="The registry's champion model, with feedback, health and metrics.",
    )
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.shadow = shadow_runner
    requests_total = metrics.requests
    errors_total = metrics.errors

    def reject(endpoint: str, version: str, exc: BadRequest) -> tuple[int, bytes]:
        requests_total.labels(
            endpoint, str(exc.status), version, SLOT_CHAMPION if endpoint == "predict" else "none"
        ).inc()
        errors_total.labels(exc.kind).inc()
        return exc.status, exc.body()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's default lists pydantic's internals; say which field is wrong and why.
        problems = []
        status = 422
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                status = 400
                problems.append(("body", f"not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"))
            else:
                problems.append((_field_of(tuple(err.get("loc", ()))), str(err.get("msg", "invalid"))))
        errors_total.labels("invalid_request").inc()
        return BadRequest(status, "invalid_request", problems or [("body", "invalid")]).response()

    # The documented contract (GET /openapi.json): what each endpoint takes and every answer it
    # can give, so a schema-driven client or fuzzer sees the same rules as the parsers above.
    def errors(codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
        return {code: {"model": ErrorResponse, "description": text} for code, text in codes.items()}

    body_errors = errors(
        {
            400: "the body is empty, not UTF-8, not JSON, or nested too deeply to parse (field: body)",
            413: f"the body is larger than any valid request could be (field: body; /predict: {body_limit} "
            f"bytes, /feedback: {FEEDBACK_BODY_LIMIT})",
            415: "Content-Type is missing or not application/json (charset, when given, utf-8; field: Content-Type)",
            422: "well-formed JSON that breaks the contract: not an object, an unknown, missing, repeated or "
            "empty field, a text too long, a batch too large, a NUL character; each problem names its field",
        }
    )
    request_id_header = {
        "X-Request-Id": {
            "description": "the HTTP exchange's id: the caller's own X-Request-Id when it is plain "
            "([A-Za-z0-9._:-]{1,128}), else a new one",
            "schema": {"type": "string"},
        }
    }
    predict_body = {
        "requestBody": {
            "required": True,
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        }
    }
    feedback_body = {
        "requestBody": {
            "required": True,
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}},
        }
    }
    bearer = "bearerAuth"

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # builds and caches app.openapi_schema
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(request_schemas(cfg))
            if expected_token is not None:
                # Only when the server has a token: without one /feedback is open, and saying
                # otherwise would be a contract the server does not keep.
                components["securitySchemes"] = {
                    bearer: {
                        "type": "http",
                        "scheme": "bearer",
                        "description": f"the token in ${cfg.api_token_env} (serving.api_token_env)",
                    }
                }
                schema["paths"]["/feedback"]["post"]["security"] = [{bearer: []}]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    async def serve_predict(scope: dict[str, Any], receive: Receive) -> tuple[int, bytes, str] | None:
        """Status, JSON body and HTTP request id of one /predict call, in its span; shared by
        the fast path and the route. None: the client left before its body arrived."""
        started = time.perf_counter()
        headers = scope["headers"]
        request_id = http_request_id(headers)
        with tracing.span(
            "POST /predict",
            {"driftloop.request_id": request_id, "http.request.method": "POST", "url.path": "/predict"},
            kind="server",
        ) as span:
            try:
                body = await _receive_body(scope, receive, body_limit)
            except _Disconnected:
                span.set("driftloop.disconnected", True)
                return None
            except BadRequest as exc:
                status, payload = reject("predict", holder.version_or_none(), exc)
            else:
                try:
                    status, payload = await _answer_predict(body, started, headers, span)
                finally:
                    activity[0] = time.monotonic()
            if span.recording:
                span.set_many(
                    {
                        "http.response.status_code": status,
                        "driftloop.latency_ms": (time.perf_counter() - started) * 1000.0,
                    }
                )
                if status >= 500:
                    span.fail(f"answered {status}")
        return status, payload, request_id

    async def _answer_predict(
        body: bytes, started: float, headers: list[tuple[bytes, bytes]], span: tracing.Span
    ) -> tuple[int, bytes]:
        snap = holder.serving  # read once: the whole request uses this routing
        if snap is None:
            return reject(
                "predict",
                "none",
                BadRequest(503, "not_ready", [("model", "no model loaded yet; retry when /ready says 200")]),
            )
        try:
            texts = parse_predict(body, cfg)
        except BadRequest as exc:
            span.set("driftloop.model_version", snap.champion.bound.version)
            return reject("predict", snap.champion.bound.version, exc)
        part = snap.canary if snap.canary is not None and snap.pick_canary(headers) else snap.champion
        # A model may lower the inline limit: a transformer's forward pass costs milliseconds
        # even for one text, which would stall every other request on the event loop.
        inline = len(texts) <= getattr(part.loaded.model, "inline_texts", INLINE_TEXTS)
        ids = [new_request_id() for _ in texts]
        while True:
            try:
                if inline:
                    predictions, tokens = predict_texts(part.loaded.model, texts)
                elif part.batcher is not None:
                    predictions, tokens = await part.batcher.submit(texts)
                else:
                    predictions, tokens = await run_in_threadpool(predict_texts, part.loaded.model, texts)
                break
            except Exception as exc:
                bound = part.bound
                log.exception("%s (%s) failed to predict a batch of %d", part.loaded.ref, bound.slot, len(texts))
                bound.failed.inc(len(texts))
                errors_total.labels("predict").inc()
                try:
                    logs["predictions"].write_errors(
                        ids,
                        texts,
                        bound.version,
                        (time.perf_counter() - started) * 1000.0,
                        bound.slot,
                        f"{type(exc).__name__}: {exc}",
                    )
                except OSError:
                    log.exception("writing the prediction log failed")
                    errors_total.labels("log_write").inc()
                if part is snap.champion:
                    requests_total.labels("predict", "500", bound.version, bound.slot).inc()
                    if span.recording:
                        span.set_many(
                            {
                                "driftloop.model_version": bound.version,
                                "driftloop.slot": bound.slot,
                                "driftloop.batch_size": len(texts),
                            }
                        )
                        span.fail("the model failed on this input", exc)
                    return 500, b'{"detail": "the model failed on this input"}'
                # A failing canary costs the caller nothing: the champion answers instead (the
                # failure is logged against the canary, which is what the rollout analysis reads).
                span.event("canary failed", {"driftloop.model_version": bound.version}, exc=exc)
                part = snap.champion
                ids = [new_request_id() for _ in texts]
        elapsed = time.perf_counter() - started
        bound = part.bound
        try:
            logs["predictions"].write_batch(
                ids, texts, predictions, bound.version, elapsed * 1000.0, tokens, bound.slot
            )
        except OSError:
            # Answering matters more than the record; the counter makes the gap visible.
            log.exception("writing the prediction log failed")
            errors_total.labels("log_write").inc()
        if snap.shadow is not None:
            shadow_runner.submit(snap.shadow, ids, texts, predictions)
        answers.add(ids, bound.version, bound.slot, predictions)
        bound.ok.inc()
        bound.observe(predictions, tokens, elapsed)
        if span.recording:
            span.set_many(
                {
                    "driftloop.model_name": part.loaded.ref.name,
                    "driftloop.model_version": bound.version,
                    "driftloop.slot": bound.slot,
                    "driftloop.batch_size": len(texts),
                    "driftloop.tokens": sum(tokens),
                    "driftloop.prediction_ids": ids,
                    "driftloop.rollout_id": snap.routing.state.rollout_id or None,
                }
            )
        # By hand, as in the prediction log: json.dumps of the nested dicts costs more.
        items = [
            f'{{"request_id":"{rid}","intent":{_q(p.intent)},"confidence":{float(p.confidence)!r}}}'
            for rid, p in zip(ids, predictions, strict=True)
        ]
        return 200, f'{{"model_version":{bound.version_json},"predictions":[{",".join(items)}]}}'.encode()

    async def fast_predict(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        answered = await serve_predict(scope, receive)
        if answered is None:
            return
        status, payload, request_id = answered
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    @app.post(
        "/predict",
        response_model=PredictResponse,
        openapi_extra=predict_body,
        responses={
            200: {"headers": request_id_header},
            **body_errors,
            **errors({503: "no model loaded yet; retry when /ready says 200 (field: model)"}),
        },
    )
    async def predict(request: Request) -> Response:
        """Classify one text (``{"text": ...}``) or a batch (``{"texts": [...]}``); each text gets its
        own ``request_id``. The body is UTF-8 JSON (``Content-Type: application/json``)."""
        # Reached only when the fast path steps aside (see ServingApp); same answers.
        answered = await serve_predict(request.scope, request.receive)
        if answered is None:
            return Response(status_code=400)  # nobody is left to read it
        status, payload, request_id = answered
        return Response(payload, status, media_type=_JSON, headers={"X-Request-Id": request_id})

    app.fast_predict = fast_predict

    def unauthorized(given: bytes | None, version: str) -> Response | None:
        """The 401 for a request without the right bearer token; None when it may pass."""
        if expected_token is None:
            return None
        # compare_digest: the time taken must not tell how much of a guess was right.
        if given and hmac.compare_digest(given, expected_token):
            return None
        requests_total.labels("feedback", "401", version, "none").inc()
        errors_total.labels("unauthorized").inc()
        message = "missing; send 'Authorization: Bearer <token>'" if given is None else "not the expected bearer token"
        challenge = 'Bearer realm="driftloop"' + ("" if given is None else ', error="invalid_token"')
        body = json.dumps(
            {"detail": f"Authorization: {message}", "errors": [{"field": "Authorization", "message": message}]}
        )
        return Response(body, 401, media_type=_JSON, headers={"WWW-Authenticate": challenge})

    feedback_responses: dict[int | str, dict[str, Any]] = {
        202: {"model": FeedbackAccepted, "description": "recorded", "headers": request_id_header},
        **body_errors,
        401: {
            "model": ErrorResponse,
            "description": "no or wrong bearer token (field: Authorization)",
            "headers": {"WWW-Authenticate": {"description": 'Bearer realm="driftloop"', "schema": {"type": "string"}}},
        },
    }
    if expected_token is None:
        del feedback_responses[401]

    @app.post(
        "/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        openapi_extra=feedback_body,
        responses=feedback_responses,
    )
    async def feedback(request: Request) -> Response:
        """Record the true label of an answered request (any label, known to the model or not).
        Needs ``Authorization: Bearer <token>`` when the server has a token (``serving.api_token_env``)."""
        request_id = http_request_id(request.scope["headers"])
        with tracing.span(
            "POST /feedback",
            {"driftloop.request_id": request_id, "http.request.method": "POST", "url.path": "/feedback"},
            kind="server",
        ) as span:
            response = await _feedback(request, span)
            if span.recording:
                span.set("http.response.status_code", response.status_code)
                if response.status_code >= 500:
                    span.fail(f"answered {response.status_code}")
        response.headers["X-Request-Id"] = request_id
        return response

    async def _feedback(request: Request, span: tracing.Span) -> Response:
        version = holder.version_or_none()
        refused = unauthorized(_bearer(request.scope["headers"]), version)
        if refused is not None:
            return refused
        try:
            request_id, label = parse_feedback(await _receive_body(request.scope, request.receive, FEEDBACK_BODY_LIMIT))
        except _Disconnected:
            return Response(status_code=400)  # nobody is left to read it
        except BadRequest as exc:
            status, payload = reject("feedback", version, exc)
            return Response(payload, status, media_type=_JSON)
        try:
            logs["feedback"].write(request_id, label)
        except OSError:
            log.exception("writing the feedback log failed")
            errors_total.labels("log_write").inc()
            requests_total.labels("feedback", "500", version, "none").inc()
            return Response(json.dumps({"detail": "could not record the feedback"}), 500, media_type=_JSON)
        metrics.feedback.inc()
        answered = answers.get(request_id)
        if answered is not None:
            metrics.feedback_labels.labels(answered[0], answered[1], "true" if answered[2] == label else "false").inc()
        if span.recording:
            # The version and slot that gave the answer, when this replica still remembers it.
            span.set_many(
                {
                    "driftloop.feedback.request_id": request_id,
                    "driftloop.feedback.label": label,
                    "driftloop.model_version": answered[0] if answered else version,
                    "driftloop.slot": answered[1] if answered else None,
                    "driftloop.feedback.correct": (answered[2] == label) if answered else None,
                }
            )
        requests_total.labels("feedback", "202", version, "none").inc()
        return Response(json.dumps({"status": "accepted", "request_id": request_id}), 202, media_type=_JSON)

    @app.get("/health", response_model=Health)
    async def health() -> Response:
        """Liveness: always 200 while the process answers, with the serving version or null."""
        current = holder.current
        version = current.ref.version if current else None
        requests_total.labels("health", "200", version or "none", "none").inc()
        return Response(json.dumps({"status": "ok", "model_version": version}), media_type=_JSON)

    @app.get("/ready", response_model=Ready, responses={503: {"model": NotReady, "description": "no model loaded yet"}})
    async def ready() -> Response:
        """Readiness: 200 once a model is loaded, 503 before."""
        current = holder.current
        if current is None:
            requests_total.labels("ready", "503", "none", "none").inc()
            return Response(json.dumps({"status": "not ready", "detail": "no model loaded yet"}), 503, media_type=_JSON)
        requests_total.labels("ready", "200", current.ref.version, "none").inc()
        return Response(
            json.dumps({"status": "ready", "model": current.ref.name, "model_version": current.ref.version}),
            media_type=_JSON,
        )

    @app.get(
        "/routing",
        responses={
            503: {
                "description": "no model loaded yet (champion null)",
                "content": {_JSON: {"schema": {"type": "object"}}},
            }
        },
    )
    async def routing() -> Response:
        """The routing this replica applies now: champion, challenger and the rollout state it
        converged to (``complete`` is false while the challenger could not be loaded)."""
        snap = holder.serving
        if snap is None:
            return Response(json.dumps({"champion": None, "loaded": [], "state": None}), 503, media_type=_JSON)
        state = snap.routing.state
        slots = {SLOT_CHAMPION: snap.champion.bound.version}
        if snap.canary is not None:
            slots[SLOT_CANARY] = snap.canary.bound.version
        if snap.shadow is not None:
            slots[SLOT_SHADOW] = snap.shadow.bound.version
        return Response(
            json.dumps(
                {
                    "champion": snap.champion.bound.version,
                    "slots": slots,
                    "standby": snap.standby.ref.version if snap.standby else None,
                    "complete": snap.complete,
                    "state": {
                        "rollout_id": state.rollout_id,
                        "mode": state.mode,
                        "challenger": state.challenger,
                        "weight": state.weight,
                        "stage": state.stage,
                        "since": state.since,
                    },
                }
            ),
            media_type=_JSON,
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "the Prometheus text exposition format",
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics_endpoint() -> Response:
        """Prometheus text format."""
        current = holder.current
        requests_total.labels("metrics", "200", current.ref.version if current else "none", "none").inc()
        status = _read_monitor_status(monitor_status, status_seen)
        if status is not None:
            metrics.drift_share.set(float(status.get("share_drifted", 0.0)))
            metrics.drift_detected.set(1.0 if status.get("drift_detected") else 0.0)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def run_server(
    cfg: ServingSettings,
    source: ModelSource,
    log_root: Path,
    *,
    low_confidence: float = 0.5,
    monitor_status: Path | None = None,
    trace_cfg: TracingSettings | None = None,
) -> None:
    """Serve until interrupted: one uvicorn worker on ``cfg.host:cfg.port`` (the CLI's entry).
    Raises :class:`MissingApiToken` before binding anything when the token is required and unset.
    ``trace_cfg``: tracing is configured from it here, the process's entry (None: left as is)."""
    import uvicorn

    app = create_app(cfg, source, log_root, low_confidence=low_confidence, monitor_status=monitor_status)
    if trace_cfg is not None:
        tracing.configure(trace_cfg, component="serving")
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, workers=1, log_level="warning", access_log=False)
    finally:
        if trace_cfg is not None:
            tracing.shutdown()  # the spans still in the batch leave before the process does
