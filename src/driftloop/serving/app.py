"""The serving app: the registry's champion behind ``/predict``, with feedback, health and metrics.

Replicas are stateless: which version serves is decided in the registry (the ``champion``
alias); each replica polls it and converges. Every answered prediction is in the prediction log
before its response is sent, and every feedback label in the feedback log.

This module wires the parts into a FastAPI app: the routing poller (:mod:`.poller`, over the
model cache and the routing snapshot), the prediction service (:mod:`.service`), the HTTP
handlers (:mod:`.handlers`) and the contract they keep (:mod:`.contract`, :mod:`.parsing`).

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
import contextlib
import ctypes
import gc
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from driftloop.adapters import tracing
from driftloop.adapters.logstore import LogRoot
from driftloop.config.settings import ServingSettings, TracingSettings
from driftloop.core.errors import RunFailed
from driftloop.serving.auth import TokenCheck, read_api_token
from driftloop.serving.cache import ModelSource
from driftloop.serving.contract import (
    BEARER_SCHEME,
    JSON_MEDIA_TYPE,
    REQUEST_ID_HEADER,
    ErrorResponse,
    FeedbackAccepted,
    Health,
    NotReady,
    OpenApiResponses,
    PredictResponse,
    Ready,
    bearer_security_scheme,
    body_error_responses,
    bounded_responses,
    request_body,
    request_schemas,
)
from driftloop.serving.handlers import HttpHandlers
from driftloop.serving.metrics import ServingMetrics
from driftloop.serving.poller import RoutingPoller
from driftloop.serving.service import PredictionService
from driftloop.serving.shared_metrics import SnapshotWriter, mark_dead
from driftloop.serving.workers import Supervisor, bind

log = logging.getLogger(__name__)


class ServingApp(FastAPI):
    """FastAPI with a direct path for ``POST /predict``.

    Routing, dependency solving and FastAPI's telemetry check cost about as much per request
    as the model does, so the hot endpoint is answered straight from the ASGI call. The
    ``/predict`` route stays registered (the OpenAPI docs, and the answer whenever the direct
    path steps aside) and both share one implementation. The direct path steps aside when any
    middleware was added (CORS, auth, OpenTelemetry's ASGI middleware must see every request)
    or the app runs under a root path.
    """

    fast_predict: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``POST /predict`` directly when nothing needs to see it; everything else as FastAPI does."""
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
    log_root: LogRoot,
    *,
    low_confidence: float = 0.5,
    api_token: str | None = None,
    metrics_dir: Path | None = None,
    freeze_gc: bool = False,
    redact: Callable[[str], str] | None = None,
) -> ServingApp:
    """The serving app. Nothing happens until it starts: the logs are opened, the champion (and
    a rollout's challenger) loaded and the poller started in its lifespan (a missing or failing
    champion leaves it running but not ready). The monitoring flow's latest verdict comes with
    the routing (a registered-model tag) and is exported as the drift gauges.

    ``api_token``: the bearer token /feedback requires; None reads it with
    :func:`~driftloop.serving.auth.read_api_token`, which raises
    :class:`~driftloop.serving.auth.MissingApiToken` when it is required and unset (the app is
    not built at all). Spans go to whatever :func:`driftloop.adapters.tracing.configure`
    installed (nothing when tracing is off).

    ``metrics_dir``: the folder the workers of one server share, so that /metrics answers for
    all of them (:mod:`driftloop.serving.shared_metrics`). ``freeze_gc``: once the champion is
    loaded, move everything allocated so far out of the garbage collector's sight
    (``gc.freeze``): a full collection otherwise walks the whole imported world (MLflow, pandas,
    scikit-learn: hundreds of thousands of objects, 100 to 300 ms) while requests wait. A server
    process's choice (:func:`run_server`), not a test's. ``redact``: applied to every text, label
    and error message before its log line is written (``privacy.redact``; None: written as sent)."""
    token = TokenCheck(api_token if api_token is not None else read_api_token(cfg))
    if not token.required:
        log.warning(
            "no API token ($%s unset, serving.require_token false): /feedback accepts anyone", cfg.api_token_env
        )
    metrics = ServingMetrics(metrics_dir)
    snapshots = SnapshotWriter(metrics.registry, metrics_dir) if metrics_dir is not None else None
    poller = RoutingPoller(
        source, metrics, cfg.reload_interval_s, low_confidence, cfg.micro_batch_texts, cfg.max_queued_texts
    )
    service = PredictionService(cfg, poller, metrics, log_root, redact)
    handlers = HttpHandlers(cfg, poller, service, metrics, token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.open()
        await asyncio.to_thread(poller.poll_safely)
        if freeze_gc:
            gc.collect()
            gc.freeze()
            _trim_heap()
        poller.start()
        if snapshots is not None:
            snapshots.start()
        try:
            yield
        finally:
            poller.stop()
            service.close()
            if snapshots is not None:
                snapshots.stop()

    app = ServingApp(
        title="driftloop serving",
        lifespan=lifespan,
        description="The registry's champion model, with feedback, health and metrics.",
    )
    app.state.poller = poller
    app.state.service = service
    app.state.in_flight = service.in_flight
    app.state.metrics = metrics
    app.add_exception_handler(RequestValidationError, handlers.validation_error)
    _add_routes(app, handlers, token.required)
    app.fast_predict = handlers.fast_predict
    _document(app, cfg, token.required)
    return app


def _trim_heap() -> None:
    # Start-up (imports, unpickling the model) frees far more than it keeps; glibc holds the freed
    # pages until asked to hand them back. Elsewhere (musl, macOS) there is nothing to ask.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _add_routes(app: FastAPI, handlers: HttpHandlers, token_required: bool) -> None:
    """The endpoints and every answer each can give, as /openapi.json states them."""
    body_errors = body_error_responses(handlers.body_limit)
    app.post(
        "/predict",
        response_model=PredictResponse,
        openapi_extra=request_body("PredictRequest"),
        responses={
            200: {"headers": REQUEST_ID_HEADER},
            **body_errors,
            **bounded_responses(handlers.callers is not None),
        },
    )(handlers.predict)
    feedback_responses: OpenApiResponses = {
        202: {"model": FeedbackAccepted, "description": "recorded", "headers": REQUEST_ID_HEADER},
        **body_errors,
    }
    if token_required:
        feedback_responses[401] = {
            "model": ErrorResponse,
            "description": "no or wrong bearer token (field: Authorization)",
            "headers": {"WWW-Authenticate": {"description": 'Bearer realm="driftloop"', "schema": {"type": "string"}}},
        }
    app.post(
        "/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        openapi_extra=request_body("FeedbackRequest"),
        responses=feedback_responses,
    )(handlers.feedback)
    app.get("/health", response_model=Health)(handlers.health)
    app.get("/ready", response_model=Ready, responses={503: {"model": NotReady, "description": "no model loaded yet"}})(
        handlers.ready
    )
    app.get(
        "/routing",
        responses={
            503: {
                "description": "no model loaded yet (champion null)",
                "content": {JSON_MEDIA_TYPE: {"schema": {"type": "object"}}},
            }
        },
    )(handlers.routing)
    app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "the Prometheus text exposition format",
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            }
        },
    )(handlers.metrics_endpoint)


def _document(app: FastAPI, cfg: ServingSettings, token_required: bool) -> None:
    """The documented contract (GET /openapi.json): FastAPI's document plus the request schemas
    the parsers keep and, only when the server has a token, the bearer scheme of /feedback."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # builds and caches app.openapi_schema
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(request_schemas(cfg))
            if token_required:
                # Without a token /feedback is open, and saying otherwise would be a contract
                # the server does not keep.
                components["securitySchemes"] = {BEARER_SCHEME: bearer_security_scheme(cfg.api_token_env)}
                schema["paths"]["/feedback"]["post"]["security"] = [{BEARER_SCHEME: []}]
            return schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def run_server(
    cfg: ServingSettings,
    make_source: Callable[[], ModelSource],
    log_root: LogRoot,
    *,
    low_confidence: float = 0.5,
    trace_cfg: TracingSettings | None = None,
    redact: Callable[[str], str] | None = None,
) -> None:
    """Serve until interrupted on ``cfg.host:cfg.port`` (the CLI's entry): one process, or with
    ``cfg.workers`` > 1 a supervisor and that many worker processes on the same socket
    (:mod:`driftloop.serving.workers`), each with its own source from ``make_source``, its own
    routing poller and prediction-log part, and one /metrics for all.

    Raises :class:`~driftloop.serving.auth.MissingApiToken` before binding anything when the
    token is required and unset, and :class:`~driftloop.core.errors.RunFailed` when workers keep
    dying at start. ``trace_cfg``: tracing is configured from it in each serving process (None:
    left as is)."""
    import uvicorn

    token = read_api_token(cfg)
    options: dict[str, Any] = {
        "low_confidence": low_confidence,
        "api_token": token,
        "freeze_gc": True,
        "redact": redact,
    }
    if cfg.workers == 1:
        app = create_app(cfg, make_source(), log_root, **options)
        with _traced(trace_cfg):
            uvicorn.run(app, host=cfg.host, port=cfg.port, workers=1, log_level="warning", access_log=False)
        return

    sock = bind(cfg.host, cfg.port)
    shared = Path(tempfile.mkdtemp(prefix="driftloop-serve-metrics-"))

    def work(index: int) -> None:
        app = create_app(cfg, make_source(), log_root, metrics_dir=shared, **options)
        with _traced(trace_cfg):  # after the fork: the span exporter's thread lives in the worker
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
            uvicorn.Server(config).run(sockets=[sock])

    supervisor = Supervisor(cfg.workers, work, on_exit=lambda pid: mark_dead(shared, pid))
    try:
        status = supervisor.run()
    finally:
        sock.close()
        shutil.rmtree(shared, ignore_errors=True)
    if status != 0:
        raise RunFailed(f"serving workers kept failing at start ({supervisor.restarts} restarts); see the log above")


@contextmanager
def _traced(trace_cfg: TracingSettings | None) -> Iterator[None]:
    if trace_cfg is not None:
        tracing.configure(trace_cfg, component="serving")
    try:
        yield
    finally:
        if trace_cfg is not None:
            tracing.shutdown()  # the spans still in the batch leave before the process does
