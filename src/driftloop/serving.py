"""The serving app: the registry's champion behind ``/predict``, with feedback, health and metrics.

Replicas are stateless: which version serves is decided in the registry (the ``champion``
alias); each replica polls it and converges. Every answered prediction is in the prediction log
before its response is sent, and every feedback label in the feedback log.

The hot path is kept lean on purpose (the model itself costs ~0.3 ms a text): the body is parsed
by hand instead of through FastAPI's model binding, a few texts are predicted inline on the event
loop (a thread hop costs more than the prediction), responses are pre-serialised, and the metric
children of the serving version are bound once per model swap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from driftloop.modelling import TextClassifier
from driftloop.predlog import FeedbackLog, PredictionLog
from driftloop.settings import ServingSettings
from driftloop.types import ModelRef

log = logging.getLogger(__name__)

# Batches up to this size are predicted on the event loop; larger ones in a worker thread so
# that small requests keep flowing between them.
INLINE_TEXTS = 8
MAX_ID_CHARS = 128
MAX_LABEL_CHARS = 200
FEEDBACK_BODY_LIMIT = 64 * 1024
# Longest wait between polls while the registry or a load keeps failing.
MAX_BACKOFF_S = 30.0
_JSON = "application/json"
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# json.dumps of a str is one call into the C escaper (ensure_ascii: lone surrogates stay safe).
_q = json.dumps


class ModelSource(Protocol):
    """Where the serving version comes from: the registry, or a fake in unit tests."""

    def champion(self) -> ModelRef | None: ...

    def load(self, ref: ModelRef) -> TextClassifier: ...


@dataclass(frozen=True)
class LoadedModel:
    ref: ModelRef
    model: TextClassifier
    loaded_at: float


# -- request and response shapes (documentation: the bodies are parsed by hand, see _parse_*) ---

class PredictRequest(BaseModel):
    """Either one text or a list of texts."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, description="one text to classify")
    texts: list[str] | None = Field(None, description="several texts (at most serving.max_batch)")


class PredictionOut(BaseModel):
    request_id: str = Field(description="server-generated id; send it back with /feedback")
    intent: str
    confidence: float


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[PredictionOut]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str
    label: str = Field(description="the true intent; may be one the model does not know yet")


class ErrorResponse(BaseModel):
    detail: str = Field(description="every problem, each prefixed with the field it concerns")
    errors: list[dict[str, str]] = Field(description="the same problems as {field, message}")


class BadRequest(Exception):
    """A request the client must fix; ``problems`` are (field, message) pairs."""

    def __init__(self, status: int, kind: str, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.status = status
        self.kind = kind
        self.problems = problems

    def body(self) -> bytes:
        return json.dumps({"detail": str(self),
                           "errors": [{"field": f, "message": m} for f, m in self.problems]}).encode()

    def response(self) -> Response:
        return Response(self.body(), status_code=self.status, media_type=_JSON)


# -- metrics -------------------------------------------------------------------------------------

class ServingMetrics:
    """The app's Prometheus series, in a registry of its own (two apps in one process, as in the
    tests, never share counts)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter("driftloop_requests", "HTTP requests by endpoint, status and model version",
                                ["endpoint", "status", "model_version"], registry=r)
        self.latency = Histogram("driftloop_predict_latency_seconds",
                                 "Time to answer /predict inside the app, by model version",
                                 ["model_version"], registry=r,
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.25, 0.5, 1.0, 2.5))
        self.predictions = Counter("driftloop_predictions", "Predictions by intent and model version",
                                   ["intent", "model_version"], registry=r)
        self.confidence = Histogram("driftloop_prediction_confidence",
                                    "Confidence of the predicted intent, by model version",
                                    ["model_version"], registry=r,
                                    buckets=tuple(round(0.1 * i, 1) for i in range(1, 11)))
        self.tokens = Histogram("driftloop_request_tokens", "Tokens per /predict request (all its texts)",
                                ["model_version"], registry=r,
                                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
        self.errors = Counter("driftloop_errors", "Errors by kind", ["kind"], registry=r)
        self.feedback = Counter("driftloop_feedback", "Feedback labels received", registry=r)
        self.model_info = Gauge("driftloop_model_info", "The model version serving now (value 1)",
                                ["model_name", "model_version"], registry=r)
        self.swaps = Counter("driftloop_model_swaps", "Model versions swapped in", registry=r)

    def bind(self, ref: ModelRef) -> "_Bound":
        return _Bound(self, ref.version)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Bound:
    """The children of one model version's series, looked up once instead of per request."""

    def __init__(self, metrics: ServingMetrics, version: str):
        self.version = version
        self.version_json = _q(version)
        self.ok = metrics.requests.labels("predict", "200", version)
        self.latency = metrics.latency.labels(version)
        self.confidence = metrics.confidence.labels(version)
        self.tokens = metrics.tokens.labels(version)
        self._predictions = metrics.predictions
        self._by_intent: dict[str, Any] = {}

    def predicted(self, intent: str) -> None:
        child = self._by_intent.get(intent)
        if child is None:
            child = self._by_intent[intent] = self._predictions.labels(intent, self.version)
        child.inc()


@dataclass(frozen=True)
class _Serving:
    """What one request needs, swapped as one reference so a request never sees a mix."""

    loaded: LoadedModel
    bound: _Bound


# -- the model holder and its reloader -----------------------------------------------------------

class ModelHolder:
    """Holds the serving model and keeps it at the source's champion.

    ``poll`` asks the source for the champion and, when it moved, loads and warms the new model,
    then swaps one attribute: requests read it once, so each is answered wholly by one version.
    A background thread polls every ``interval_s``; after a failure it backs off (doubling, up to
    :data:`MAX_BACKOFF_S`) and the old model keeps serving.
    """

    def __init__(self, source: ModelSource, metrics: ServingMetrics, interval_s: float):
        self.source = source
        self.metrics = metrics
        self.interval_s = interval_s
        self.serving: _Serving | None = None
        self._previous: _Serving | None = None  # kept so a rollback swaps back without a load
        self._failures = 0
        self._warned_no_champion = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        serving = self.serving
        return serving.loaded if serving else None

    def version_or_none(self) -> str:
        """The serving version, or "none" (the metrics' label before a model is loaded)."""
        serving = self.serving
        return serving.bound.version if serving else "none"

    def poll(self) -> bool:
        """One check of the champion; True when a new version was swapped in. Raises on errors."""
        with self._poll_lock:
            ref = self.source.champion()
            serving = self.serving
            if ref is None:
                if serving is not None and not self._warned_no_champion:
                    log.warning("the source has no champion; %s keeps serving", serving.loaded.ref)
                    self._warned_no_champion = True
                return False
            self._warned_no_champion = False
            if serving is not None and serving.loaded.ref == ref:
                return False
            if self._previous is not None and self._previous.loaded.ref == ref:
                new = self._previous
            else:
                started = time.perf_counter()
                model = self.source.load(ref)
                # Warm-up: builds the model's lazy state here rather than on a request.
                model.predict(["warm up"])
                model.count_tokens("warm up")
                new = _Serving(LoadedModel(ref, model, time.time()), self.metrics.bind(ref))
                log.info("loaded %s in %.2fs", ref, time.perf_counter() - started)
            self.serving = new
            self._previous = serving
            if serving is not None:
                self.metrics.model_info.remove(serving.loaded.ref.name, serving.loaded.ref.version)
            self.metrics.model_info.labels(ref.name, ref.version).set(1)
            self.metrics.swaps.inc()
            log.info("now serving %s (was %s)", ref, serving.loaded.ref if serving else None)
            return True

    def poll_safely(self) -> bool:
        """``poll``, with errors logged and counted instead of raised."""
        try:
            swapped = self.poll()
        except Exception as exc:
            self._failures += 1
            self.metrics.errors.labels("reload").inc()
            if self._failures == 1:
                log.exception("polling or loading the champion failed; the current model keeps serving")
            else:
                log.warning("polling or loading the champion failed again (%d in a row): %s",
                            self._failures, exc)
            return False
        self._failures = 0
        return swapped

    def next_delay(self) -> float:
        if self._failures == 0:
            return self.interval_s
        return min(self.interval_s * 2 ** self._failures, max(self.interval_s, MAX_BACKOFF_S))

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="champion-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.next_delay()):
            self.poll_safely()


# -- request parsing -----------------------------------------------------------------------------

def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


class _Disconnected(Exception):
    """The client went away before its body arrived; there is no one to answer."""


async def _receive_body(scope: dict[str, Any], receive: Receive, limit: int) -> bytes:
    """The request body from raw ASGI messages, refusing more than ``limit`` bytes (413)."""
    too_large = BadRequest(413, "too_large", [("body", f"larger than the limit of {limit} bytes")])
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit() or int(value) > limit:
                raise too_large
            break
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
            raise too_large
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


def _parse_json_object(body: bytes, shape: str) -> dict[str, Any]:
    if not body:
        raise BadRequest(400, "invalid_json", [("body", f"empty; expected a JSON object like {shape}")])
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, "invalid_utf8",
                         [("body", f"not valid UTF-8 (byte {exc.start}: {exc.reason})")]) from None
    try:
        value = json.loads(decoded)
    except ValueError as exc:
        raise BadRequest(400, "invalid_json", [("body", f"not valid JSON: {exc}")]) from None
    if not isinstance(value, dict):
        raise BadRequest(422, "invalid_request",
                         [("body", f"expected a JSON object like {shape}, got {_type_name(value)}")])
    return value


def _check_text(field: str, value: Any, max_chars: int, problems: list[tuple[str, str]]) -> None:
    if not isinstance(value, str):
        problems.append((field, f"expected a string, got {_type_name(value)}"))
    elif not value or value.isspace():
        problems.append((field, "must not be empty or only whitespace"))
    elif len(value) > max_chars:
        problems.append((field, f"{len(value)} characters, more than the limit of {max_chars}"))


def parse_predict(body: bytes, cfg: ServingSettings) -> list[str]:
    """The texts of a /predict body, or :class:`BadRequest` naming every offending field."""
    shape = '{"text": "..."} or {"texts": ["...", ...]}'
    value = _parse_json_object(body, shape)
    problems: list[tuple[str, str]] = []
    unknown = sorted(set(value) - {"text", "texts"})
    for key in unknown:
        problems.append((key, "unknown field; expected 'text' or 'texts'"))
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
                if len(problems) >= 10:
                    break  # enough to fix; the response stays small
            texts = raw
    if problems:
        raise BadRequest(422, "invalid_request", problems)
    return texts


def parse_feedback(body: bytes) -> tuple[str, str]:
    """(request_id, label) of a /feedback body, or :class:`BadRequest`."""
    value = _parse_json_object(body, '{"request_id": "...", "label": "..."}')
    problems: list[tuple[str, str]] = []
    for key in sorted(set(value) - {"request_id", "label"}):
        problems.append((key, "unknown field; expected 'request_id' and 'label'"))
    for key, limit in (("request_id", MAX_ID_CHARS), ("label", MAX_LABEL_CHARS)):
        if key not in value:
            problems.append((key, "missing"))
        else:
            _check_text(key, value[key], limit, problems)
    if problems:
        raise BadRequest(422, "invalid_request", problems)
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
        if (self.fast_predict is not None and scope["type"] == "http" and scope["path"] == "/predict"
                and scope["method"] == "POST" and not self.user_middleware
                and not scope.get("root_path")):
            await self.fast_predict(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(cfg: ServingSettings, source: ModelSource, log_root: Path) -> ServingApp:
    """The serving app. Nothing happens until it starts: the logs are opened, the champion is
    loaded and the poller started in its lifespan (a missing or failing champion leaves it
    running but not ready)."""
    metrics = ServingMetrics()
    holder = ModelHolder(source, metrics, cfg.reload_interval_s)
    # Bodies beyond this cannot be valid: every text escaped at its longest (12 bytes a char,
    # a surrogate pair written as \uXXXX\uXXXX), plus room for the keys.
    body_limit = cfg.max_batch * (cfg.max_text_chars * 12 + 8) + 1024
    logs: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs["predictions"] = PredictionLog(log_root, cfg.fsync_interval_s)
        logs["feedback"] = FeedbackLog(log_root, cfg.fsync_interval_s)
        await asyncio.to_thread(holder.poll_safely)
        holder.start()
        try:
            yield
        finally:
            holder.stop()
            logs["predictions"].close()
            logs["feedback"].close()

    app = ServingApp(title="driftloop serving", lifespan=lifespan,
                  description="The registry's champion model, with feedback, health and metrics.")
    app.state.holder = holder
    app.state.metrics = metrics
    requests_total = metrics.requests
    errors_total = metrics.errors

    def reject(endpoint: str, version: str, exc: BadRequest) -> tuple[int, bytes]:
        requests_total.labels(endpoint, str(exc.status), version).inc()
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

    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (400, 413, 422)
    }
    predict_body = {"requestBody": {"required": True, "content": {
        _JSON: {"schema": PredictRequest.model_json_schema()}}}}
    feedback_body = {"requestBody": {"required": True, "content": {
        _JSON: {"schema": FeedbackRequest.model_json_schema()}}}}

    async def answer_predict(body: bytes, started: float) -> tuple[int, bytes]:
        """Status and JSON body of one /predict call, shared by the fast path and the route."""
        serving = holder.serving  # read once: the whole request uses this version
        if serving is None:
            return reject("predict", "none", BadRequest(
                503, "not_ready", [("model", "no model loaded yet; retry when /ready says 200")]))
        loaded, bound = serving.loaded, serving.bound
        try:
            texts = parse_predict(body, cfg)
        except BadRequest as exc:
            return reject("predict", bound.version, exc)
        model = loaded.model
        try:
            if len(texts) <= INLINE_TEXTS:
                predictions = model.predict(texts)
                tokens = [model.count_tokens(t) for t in texts]
            else:
                predictions, tokens = await run_in_threadpool(
                    lambda: (model.predict(texts), [model.count_tokens(t) for t in texts]))
        except Exception:
            log.exception("%s failed to predict a batch of %d", loaded.ref, len(texts))
            requests_total.labels("predict", "500", bound.version).inc()
            errors_total.labels("predict").inc()
            return 500, b'{"detail": "the model failed on this input"}'
        elapsed = time.perf_counter() - started
        ids = [new_request_id() for _ in texts]
        try:
            logs["predictions"].write_batch(ids, texts, predictions, bound.version, elapsed * 1000.0, tokens)
        except OSError:
            # Answering matters more than the record; the counter makes the gap visible.
            log.exception("writing the prediction log failed")
            errors_total.labels("log_write").inc()
        bound.ok.inc()
        bound.latency.observe(elapsed)
        bound.tokens.observe(sum(tokens))
        items = []
        for rid, p in zip(ids, predictions):
            bound.predicted(p.intent)
            bound.confidence.observe(p.confidence)
            # By hand, as in the prediction log: json.dumps of the nested dicts costs more.
            items.append(f'{{"request_id":"{rid}","intent":{_q(p.intent)},'
                         f'"confidence":{float(p.confidence)!r}}}')
        return 200, f'{{"model_version":{bound.version_json},"predictions":[{",".join(items)}]}}'.encode()

    async def fast_predict(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            body = await _receive_body(scope, receive, body_limit)
        except _Disconnected:
            return
        except BadRequest as exc:
            status, payload = reject("predict", holder.version_or_none(), exc)
        else:
            status, payload = await answer_predict(body, started)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    @app.post("/predict", response_model=PredictResponse, openapi_extra=predict_body,
              responses={**error_responses, 503: {"model": ErrorResponse}})
    async def predict(request: Request) -> Response:
        """Classify one text or a batch; each text gets its own ``request_id``."""
        # Reached only when the fast path steps aside (see ServingApp); same answers.
        started = time.perf_counter()
        try:
            body = await _receive_body(request.scope, request.receive, body_limit)
        except _Disconnected:
            return Response(status_code=400)  # nobody is left to read it
        except BadRequest as exc:
            status, payload = reject("predict", holder.version_or_none(), exc)
        else:
            status, payload = await answer_predict(body, started)
        return Response(payload, status, media_type=_JSON)

    app.fast_predict = fast_predict

    @app.post("/feedback", status_code=202, openapi_extra=feedback_body,
              responses={**error_responses, 202: {"description": "recorded"}})
    async def feedback(request: Request) -> Response:
        """Record the true label of an answered request (any label, known to the model or not)."""
        version = holder.version_or_none()
        try:
            request_id, label = parse_feedback(
                await _receive_body(request.scope, request.receive, FEEDBACK_BODY_LIMIT))
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
            requests_total.labels("feedback", "500", version).inc()
            return Response(json.dumps({"detail": "could not record the feedback"}), 500, media_type=_JSON)
        metrics.feedback.inc()
        requests_total.labels("feedback", "202", version).inc()
        return Response(json.dumps({"status": "accepted", "request_id": request_id}), 202,
                        media_type=_JSON)

    @app.get("/health")
    async def health() -> Response:
        """Liveness: always 200 while the process answers, with the serving version or null."""
        current = holder.current
        version = current.ref.version if current else None
        requests_total.labels("health", "200", version or "none").inc()
        return Response(json.dumps({"status": "ok", "model_version": version}), media_type=_JSON)

    @app.get("/ready", responses={503: {"description": "no model loaded yet"}})
    async def ready() -> Response:
        """Readiness: 200 once a model is loaded, 503 before."""
        current = holder.current
        if current is None:
            requests_total.labels("ready", "503", "none").inc()
            return Response(json.dumps({"status": "not ready", "detail": "no model loaded yet"}), 503,
                            media_type=_JSON)
        requests_total.labels("ready", "200", current.ref.version).inc()
        return Response(json.dumps({"status": "ready", "model": current.ref.name,
                                    "model_version": current.ref.version}), media_type=_JSON)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        """Prometheus text format."""
        current = holder.current
        requests_total.labels("metrics", "200", current.ref.version if current else "none").inc()
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def run_server(cfg: ServingSettings, source: ModelSource, log_root: Path) -> None:
    """Serve until interrupted: one uvicorn worker on ``cfg.host:cfg.port`` (the CLI's entry)."""
    import uvicorn

    uvicorn.run(create_app(cfg, source, log_root), host=cfg.host, port=cfg.port, workers=1,
                log_level="warning", access_log=False)
