"""The HTTP handlers: thin layers that parse a request, call the prediction service and render
its typed answer, all sharing one explicit :class:`HttpHandlers` object."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, NamedTuple

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from driftloop.adapters import tracing
from driftloop.config.settings import ServingSettings
from driftloop.core.types import SLOT_CANARY, SLOT_CHAMPION, SLOT_SHADOW
from driftloop.serving.auth import TokenCheck
from driftloop.serving.contract import (
    FEEDBACK_BODY_LIMIT,
    JSON_MEDIA_TYPE,
    BadRequest,
    overloaded,
    predict_body_limit,
    rate_limited,
    slow_body,
)
from driftloop.serving.ids import http_request_id
from driftloop.serving.limits import CallerLimits, Overloaded, caller_key, retry_after
from driftloop.serving.metrics import ServingMetrics, export_monitor_status
from driftloop.serving.parsing import (
    Disconnected,
    field_of,
    parse_feedback,
    parse_predict,
    receive_body,
)
from driftloop.serving.poller import RoutingPoller
from driftloop.serving.service import Answered, FeedbackOutcome, ModelFailed, PredictionService
from driftloop.serving.snapshot import RoutingSnapshot, caller_id

# json.dumps of a str is one call into the C escaper (ensure_ascii: lone surrogates stay safe).
_q = json.dumps
_NOT_READY = BadRequest(503, "not_ready", [("model", "no model loaded yet; retry when /ready says 200")])
_MODEL_FAILED = b'{"detail": "the model failed on this input"}'
Headers = list[tuple[bytes, bytes]]
_NO_HEADERS: Headers = []
_CLOSE: Headers = [(b"connection", b"close")]


class PredictAnswer(NamedTuple):
    """One /predict call's answer: status, JSON body, HTTP request id and any further headers."""

    status: int
    body: bytes
    request_id: str
    headers: Headers


def problem_response(exc: BadRequest) -> Response:
    """The problem answer of a refused request."""
    return Response(exc.body(), status_code=exc.status, media_type=JSON_MEDIA_TYPE)


def bounded_headers(exc: BadRequest) -> Headers:
    """The headers of a refusal that keeps the server bounded: ``Retry-After`` (429, 503), and
    ``Connection: close`` after a body that did not arrive (its rest is not worth waiting for)."""
    if exc.retry_after is not None:
        return [(b"retry-after", str(exc.retry_after).encode())]
    return _CLOSE if exc.status == 408 else _NO_HEADERS


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status, media_type=JSON_MEDIA_TYPE, headers=headers)


def render_predictions(answered: Answered) -> bytes:
    """The /predict 200 body. By hand, as in the prediction log: json.dumps of the nested dicts costs more."""
    items = [
        f'{{"request_id":"{rid}","intent":{_q(p.intent)},"confidence":{float(p.confidence)!r}}}'
        for rid, p in zip(answered.ids, answered.predictions, strict=True)
    ]
    return f'{{"model_version":{answered.slot.bound.version_json},"predictions":[{",".join(items)}]}}'.encode()


def render_routing(snap: RoutingSnapshot) -> dict[str, Any]:
    """The /routing body: the slots this replica serves and the rollout state it converged to."""
    state = snap.routing.state
    slots = {SLOT_CHAMPION: snap.champion.bound.version}
    if snap.canary is not None:
        slots[SLOT_CANARY] = snap.canary.bound.version
    if snap.shadow is not None:
        slots[SLOT_SHADOW] = snap.shadow.bound.version
    return {
        "champion": snap.champion.bound.version,
        "slots": slots,
        "standby": snap.standby.ref.version if snap.standby else None,
        "complete": snap.complete,
        "state": {
            # Not the id itself: it salts the canary hash (core.types.RolloutState.fingerprint).
            "rollout": state.fingerprint,
            "mode": state.mode,
            "challenger": state.challenger,
            "weight": state.weight,
            "stage": state.stage,
            "since": state.since,
        },
    }


class HttpHandlers:
    """Every endpoint of the serving app, over the state they share: the settings, the routing
    poller, the prediction service, the metrics, the token check and the monitoring verdict."""

    def __init__(
        self,
        cfg: ServingSettings,
        poller: RoutingPoller,
        service: PredictionService,
        metrics: ServingMetrics,
        token: TokenCheck,
    ):
        self.cfg = cfg
        self.poller = poller
        self.service = service
        self.metrics = metrics
        self.token = token
        self.body_limit = predict_body_limit(cfg)
        # Each caller's rate (off unless serving.rate_limit_per_s is set); the texts in flight
        # are the service's to bound (it knows which requests wait).
        self.callers = CallerLimits(cfg.rate_limit_per_s, cfg.rate_burst) if cfg.rate_limit_per_s > 0 else None

    def reject(self, endpoint: str, version: str, exc: BadRequest) -> tuple[int, bytes]:
        """Count a refused request and give its status and problem body."""
        self.metrics.count_request(endpoint, exc.status, version, SLOT_CHAMPION if endpoint == "predict" else "none")
        self.metrics.count_error(exc.kind)
        return exc.status, exc.body()

    async def validation_error(self, request: Request, exc: Exception) -> Response:
        """FastAPI's validation errors as problem answers: which field is wrong and why (its
        default lists pydantic's internals)."""
        problems = []
        status = 422
        for err in exc.errors() if isinstance(exc, RequestValidationError) else ():
            if err.get("type") == "json_invalid":
                status = 400
                problems.append(("body", f"not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"))
            else:
                problems.append((field_of(tuple(err.get("loc", ()))), str(err.get("msg", "invalid"))))
        self.metrics.count_error("invalid_request")
        return problem_response(BadRequest(status, "invalid_request", problems or [("body", "invalid")]))

    # -- /predict --------------------------------------------------------------------------------

    def refuse_bounded(self, exc: BadRequest) -> tuple[int, bytes, Headers]:
        """Count a /predict refused to keep the server bounded (503, 429, 408); its answer."""
        self.metrics.count_rejected(exc.kind, exc.status, self.poller.version_or_none())
        return exc.status, exc.body(), bounded_headers(exc)

    async def serve_predict(self, scope: Scope, receive: Receive) -> PredictAnswer | None:
        """One /predict call's answer, in its span; shared by the fast path and the route.
        None: the client left before its body arrived.

        The order is the bounds': a caller over its rate is refused before its body is read;
        the body (at most ``body_limit`` bytes, declared as JSON, whole within
        ``serving.body_timeout_s``) is read next; its texts are predicted only when they fit
        under ``serving.max_in_flight`` and, waiting for a busy model, under
        ``serving.max_queued_texts``; else 503 with Retry-After, nothing queued."""
        started = time.perf_counter()
        headers = scope["headers"]
        request_id = http_request_id(headers)
        extra = _NO_HEADERS
        with tracing.span(
            "POST /predict",
            {"driftloop.request_id": request_id, "http.request.method": "POST", "url.path": "/predict"},
            kind="server",
        ) as span:
            caller = None
            if self.callers is not None:
                caller = caller_key(self.token.holds(headers), scope.get("client"))
                wait = self.callers.wait(caller)
                if wait > 0:
                    status, payload, extra = self.refuse_bounded(
                        rate_limited(retry_after(wait), self.cfg.rate_limit_per_s)
                    )
                    _finish_span(span, status, started)
                    return PredictAnswer(status, payload, request_id, extra)
            try:
                async with asyncio.timeout(self.cfg.body_timeout_s):
                    body = await receive_body(scope, receive, self.body_limit)
            except Disconnected:
                span.set("driftloop.disconnected", True)
                return None
            except BadRequest as exc:
                status, payload = self.reject("predict", self.poller.version_or_none(), exc)
            except TimeoutError:
                status, payload, extra = self.refuse_bounded(slow_body(self.cfg.body_timeout_s))
            else:
                try:
                    status, payload, extra = await self._answer_predict(body, started, headers, span, caller)
                finally:
                    self.service.mark_active()
            _finish_span(span, status, started)
            if status >= 500 and span.recording:
                span.fail(f"answered {status}")
        return PredictAnswer(status, payload, request_id, extra)

    async def _answer_predict(
        self,
        body: bytes,
        started: float,
        headers: list[tuple[bytes, bytes]],
        span: tracing.Span,
        caller: bytes | None,
    ) -> tuple[int, bytes, Headers]:
        snap = self.service.snapshot()  # read once: the whole request uses this routing
        if snap is None:
            return (*self.reject("predict", "none", _NOT_READY), _NO_HEADERS)
        try:
            texts = parse_predict(body, self.cfg)
        except BadRequest as exc:
            span.set("driftloop.model_version", snap.champion.bound.version)
            return (*self.reject("predict", snap.champion.bound.version, exc), _NO_HEADERS)
        if caller is not None and self.callers is not None:
            self.callers.charge(caller, len(texts))
        sticky = caller_id(headers) if snap.canary is not None else None
        try:
            answered = await self.service.predict(texts, snap, caller_id=sticky, started=started, span=span)
        except Overloaded as exc:
            return self.refuse_bounded(overloaded(self.cfg.retry_after_s, str(exc)))
        if isinstance(answered, ModelFailed):
            if span.recording:
                span.set_many(
                    {
                        "driftloop.model_version": answered.model_version,
                        "driftloop.slot": answered.slot_name,
                        "driftloop.batch_size": answered.texts,
                    }
                )
                span.fail("the model failed on this input", answered.error)
            return 500, _MODEL_FAILED, _NO_HEADERS
        if span.recording:
            attributes: dict[str, tracing.AttributeValue] = {
                "driftloop.model_name": answered.model_name,
                "driftloop.model_version": answered.model_version,
                "driftloop.slot": answered.slot_name,
                "driftloop.batch_size": len(texts),
                "driftloop.tokens": sum(answered.tokens),
                "driftloop.prediction_ids": answered.ids,
            }
            if snap.routing.state.rollout_id:
                attributes["driftloop.rollout_id"] = snap.routing.state.rollout_id
            span.set_many(attributes)
        return 200, render_predictions(answered), _NO_HEADERS

    async def fast_predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /predict`` answered straight from the ASGI call (see ``ServingApp``)."""
        answered = await self.serve_predict(scope, receive)
        if answered is None:
            return
        status, payload, request_id, extra = answered
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-request-id", request_id.encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def predict(self, request: Request) -> Response:
        """Classify one text (``{"text": ...}``) or a batch (``{"texts": [...]}``); each text gets its
        own ``request_id``. The body is UTF-8 JSON (``Content-Type: application/json``)."""
        # Reached only when the fast path steps aside (see ServingApp); same answers.
        answered = await self.serve_predict(request.scope, request.receive)
        if answered is None:
            return Response(status_code=400)  # nobody is left to read it
        status, payload, request_id, extra = answered
        response_headers = {"X-Request-Id": request_id, **{k.decode(): v.decode() for k, v in extra}}
        return Response(payload, status, media_type=JSON_MEDIA_TYPE, headers=response_headers)

    # -- /feedback -------------------------------------------------------------------------------

    async def feedback(self, request: Request) -> Response:
        """Record the true label of an answered request (any label, known to the model or not).
        Needs ``Authorization: Bearer <token>`` when the server has a token (``serving.api_token_env``)."""
        request_id = http_request_id(request.scope["headers"])
        with tracing.span(
            "POST /feedback",
            {"driftloop.request_id": request_id, "http.request.method": "POST", "url.path": "/feedback"},
            kind="server",
        ) as span:
            response = await self._feedback(request, span)
            if span.recording:
                span.set("http.response.status_code", response.status_code)
                if response.status_code >= 500:
                    span.fail(f"answered {response.status_code}")
        response.headers["X-Request-Id"] = request_id
        return response

    def _unauthorized(self, headers: list[tuple[bytes, bytes]], version: str) -> Response | None:
        """The 401 for a request without the right bearer token; None when it may pass."""
        refusal = self.token.refusal(headers)
        if refusal is None:
            return None
        self.metrics.count_request("feedback", 401, version)
        self.metrics.count_error("unauthorized")
        body = {
            "detail": f"Authorization: {refusal.message}",
            "errors": [{"field": "Authorization", "message": refusal.message}],
        }
        return _json(body, 401, headers={"WWW-Authenticate": refusal.challenge})

    async def _feedback(self, request: Request, span: tracing.Span) -> Response:
        version = self.poller.version_or_none()
        refused = self._unauthorized(request.scope["headers"], version)
        if refused is not None:
            return refused
        try:
            request_id, label = parse_feedback(await receive_body(request.scope, request.receive, FEEDBACK_BODY_LIMIT))
        except Disconnected:
            return Response(status_code=400)  # nobody is left to read it
        except BadRequest as exc:
            status, payload = self.reject("feedback", version, exc)
            return Response(payload, status, media_type=JSON_MEDIA_TYPE)
        outcome = self.service.record_feedback(request_id, label)
        if not outcome.recorded:
            self.metrics.count_request("feedback", 500, version)
            return _json({"detail": "could not record the feedback"}, 500)
        if span.recording:
            _feedback_span(span, outcome, version)
        self.metrics.count_request("feedback", 202, version)
        return _json({"status": "accepted", "request_id": request_id}, 202)

    # -- health, readiness, routing, metrics -----------------------------------------------------

    async def health(self) -> Response:
        """Liveness: always 200 while the process answers, with the serving version or null."""
        current = self.poller.current
        version = current.ref.version if current else None
        self.metrics.count_request("health", 200, version or "none")
        return _json({"status": "ok", "model_version": version})

    async def ready(self) -> Response:
        """Readiness: 200 once a model is loaded, 503 before."""
        current = self.poller.current
        if current is None:
            self.metrics.count_request("ready", 503, "none")
            return _json({"status": "not ready", "detail": "no model loaded yet"}, 503)
        self.metrics.count_request("ready", 200, current.ref.version)
        return _json({"status": "ready", "model": current.ref.name, "model_version": current.ref.version})

    async def routing(self) -> Response:
        """The routing this replica applies now: champion, challenger and the rollout state it
        converged to (``complete`` is false while the challenger could not be loaded)."""
        snap = self.poller.serving
        if snap is None:
            return _json({"champion": None, "loaded": [], "state": None}, 503)
        return _json(render_routing(snap))

    async def metrics_endpoint(self) -> Response:
        """Prometheus text format."""
        current = self.poller.current
        self.metrics.count_request("metrics", 200, current.ref.version if current else "none")
        export_monitor_status(self.poller.monitor, self.metrics)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _finish_span(span: tracing.Span, status: int, started: float) -> None:
    if span.recording:
        span.set_many(
            {"http.response.status_code": status, "driftloop.latency_ms": (time.perf_counter() - started) * 1000.0}
        )


def _feedback_span(span: tracing.Span, outcome: FeedbackOutcome, version: str) -> None:
    # The version and slot that gave the answer, when this replica still remembers it.
    answer = outcome.answer
    attributes: dict[str, tracing.AttributeValue] = {
        "driftloop.feedback.request_id": outcome.request_id,
        # Not the label: what a user asked about leaves the replica only in the feedback log.
        "driftloop.model_version": answer.model_version if answer else version,
    }
    if answer is not None:
        attributes["driftloop.slot"] = answer.slot
        attributes["driftloop.feedback.correct"] = answer.intent == outcome.label
    span.set_many(attributes)
