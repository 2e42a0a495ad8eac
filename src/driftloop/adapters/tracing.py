"""OpenTelemetry traces: the one adapter that imports ``opentelemetry``.

Serving requests and flow runs are spans. The exporter is OTLP over HTTP/protobuf when an
endpoint is configured (``tracing.otlp_endpoint``, or the standard ``OTEL_EXPORTER_OTLP_*``
variables) and there is none otherwise: :func:`span` then hands out one shared no-op object, so
an untraced request pays a global lookup, not a span.

Nothing happens at import. :func:`configure` is called at the entry points (``run_server``, the
first flow of a process via :func:`traced_flow`). The provider is held here and not installed as
OpenTelemetry's global one: the global can be set only once per process, while tests (and a
process that reconfigures) must be able to swap it. Context propagation is global anyway, so a
flow started inside another flow's span is its child.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from driftloop.config.settings import TracingSettings

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
ENV_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
_KINDS = {"internal": SpanKind.INTERNAL, "server": SpanKind.SERVER, "client": SpanKind.CLIENT}
P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class _State:
    configured: bool = False
    provider: TracerProvider | None = None
    tracer: trace.Tracer | None = None
    exporter: SpanExporter | None = None
    processor: SpanProcessor | None = None
    endpoint: str | None = None


_state = _State()
_lock = threading.Lock()


def resolve_endpoint(cfg: TracingSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/HTTP traces URL to export to, or None (tracing off).

    The setting wins; then ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (a full signal URL, used as it
    is, as the OpenTelemetry spec says), then ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base URL).
    ``OTEL_SDK_DISABLED=true`` turns tracing off whatever is set.
    """
    if environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        return None
    if cfg.otlp_endpoint:
        return _traces_url(cfg.otlp_endpoint)
    if environ.get(ENV_TRACES_ENDPOINT, "").strip():
        return environ[ENV_TRACES_ENDPOINT].strip()
    if environ.get(ENV_ENDPOINT, "").strip():
        return _traces_url(environ[ENV_ENDPOINT].strip())
    return None


def _traces_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def configure(
    cfg: TracingSettings,
    exporter: SpanExporter | None = None,
    *,
    component: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> bool:
    """Install this process's tracer from the settings; True when spans are recorded.

    ``exporter`` (tests: the SDK's ``InMemorySpanExporter``) is used as given, span by span
    (``SimpleSpanProcessor``); otherwise an endpoint gives a ``BatchSpanProcessor`` around an
    ``OTLPSpanExporter`` (spans leave in the background, never on a request's path), and no
    endpoint gives no provider at all. A previously installed provider is flushed and shut down.
    ``component`` (serving, flows) becomes the ``driftloop.component`` resource attribute, so
    one service name covers both sides and a query can still tell them apart.
    """
    endpoint = None if exporter is not None else resolve_endpoint(cfg, environ)
    with _lock:
        _shutdown_locked()
        _state.configured = True
        if exporter is None and endpoint is None:
            return False
        attributes: dict[str, Any] = {SERVICE_NAME: cfg.service_name}
        if component:
            attributes["driftloop.component"] = component
        provider = TracerProvider(resource=Resource.create(attributes))
        if exporter is not None:
            processor: SpanProcessor = SimpleSpanProcessor(exporter)
        else:
            # Imported here: it pulls in requests and protobuf, which an untraced process never needs.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint)
            processor = BatchSpanProcessor(exporter)
        provider.add_span_processor(processor)
        _state.provider, _state.exporter, _state.processor, _state.endpoint = provider, exporter, processor, endpoint
        _state.tracer = provider.get_tracer("driftloop")
    if endpoint is not None:
        log.info("tracing: exporting spans over OTLP/HTTP to %s", endpoint)
    return True


def configure_once(load: Callable[[], TracingSettings], *, component: str | None = None) -> bool:
    """:func:`configure` unless this process already did (explicitly, or an outer flow): a
    subflow must not replace the provider its parent's span is being recorded by. ``load`` is
    only called when configuring."""
    if _state.configured:
        return _state.tracer is not None
    return configure(load(), component=component)


def shutdown() -> None:
    """Flush and drop the provider; tracing is off and unconfigured afterwards."""
    with _lock:
        _shutdown_locked()


def _shutdown_locked() -> None:
    provider = _state.provider
    _state.configured = False
    _state.provider = _state.tracer = _state.exporter = _state.processor = _state.endpoint = None
    if provider is not None:
        provider.shutdown()  # flushes what the batch processor still holds


def enabled() -> bool:
    return _state.tracer is not None


def exporter() -> SpanExporter | None:
    """The installed exporter (None when tracing is off)."""
    return _state.exporter


def processor() -> SpanProcessor | None:
    return _state.processor


def endpoint() -> str | None:
    """The OTLP URL spans are exported to (None: off, or a given exporter)."""
    return _state.endpoint


# -- spans ---------------------------------------------------------------------------------------

AttributeValue = str | bool | int | float | list[str] | list[int] | list[float] | tuple
# The attributes a span starts with or takes at once: a None value is left out (an attribute that
# does not apply to this run, e.g. the drift share when there was no window).
Attributes = Mapping[str, AttributeValue | None]


class Span:
    """What driftloop does with a span. This base is the no-op one (tracing off):
    ``recording`` lets a caller skip computing attributes nobody will see."""

    __slots__ = ()
    recording = False

    def set(self, key: str, value: AttributeValue) -> None:
        pass

    def set_many(self, attributes: Attributes) -> None:
        pass

    def fail(self, description: str, exc: BaseException | None = None) -> None:
        """Mark the span as failed (error status), with the exception when there is one."""

    def event(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None, exc: BaseException | None = None
    ) -> None:
        pass


class _LiveSpan(Span):
    __slots__ = ("_span",)
    recording = True

    def __init__(self, span: trace.Span):
        self._span = span

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def set_many(self, attributes: Attributes) -> None:
        self._span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def fail(self, description: str, exc: BaseException | None = None) -> None:
        if exc is not None:
            self._span.record_exception(exc)
        self._span.set_status(Status(StatusCode.ERROR, description))

    def event(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None, exc: BaseException | None = None
    ) -> None:
        if exc is not None:
            self._span.record_exception(exc, attributes=dict(attributes or {}))
        else:
            self._span.add_event(name, dict(attributes or {}))


class _NoSpanContext:
    __slots__ = ()
    _span = Span()

    def __enter__(self) -> Span:
        return self._span

    def __exit__(self, *exc: Any) -> None:
        return None


_NO_SPAN = _NoSpanContext()


class _SpanContext:
    __slots__ = ("_args", "_cm")

    def __init__(self, tracer: trace.Tracer, name: str, kind: SpanKind, attributes: Attributes | None):
        self._args = (tracer, name, kind, attributes)

    def __enter__(self) -> Span:
        tracer, name, kind, attributes = self._args
        # An exception escaping the block is recorded on the span and sets its error status.
        self._cm = tracer.start_as_current_span(
            name, kind=kind, attributes={k: v for k, v in (attributes or {}).items() if v is not None}
        )
        return _LiveSpan(self._cm.__enter__())

    def __exit__(self, *exc: Any) -> bool | None:
        return self._cm.__exit__(*exc)


def span(name: str, attributes: Attributes | None = None, *, kind: str = "internal") -> _SpanContext | _NoSpanContext:
    """A span around a block, current for the block (spans started inside are its children).
    ``kind``: internal, server or client. Attributes with a None value are left out."""
    tracer = _state.tracer
    if tracer is None:
        return _NO_SPAN
    return _SpanContext(tracer, name, _KINDS[kind], attributes)


def flow_span(flow_name: str, run_id: str, attributes: Attributes | None = None) -> _SpanContext | _NoSpanContext:
    """The span of one flow run."""
    return span(
        f"flow {flow_name}", {"driftloop.flow.name": flow_name, "driftloop.flow.run_id": run_id, **(attributes or {})}
    )


def traced_flow(
    flow_name: str,
    *,
    run_id: Callable[[], str],
    outcome: Callable[[Any], Attributes] | None = None,
    settings: Callable[[list[str] | None], TracingSettings] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a flow's function (under ``@flow``) to run it inside :func:`flow_span`.

    The first flow of a process configures tracing from its own ``config`` parameter (a
    Prefect worker runs a flow with no other entry point); ``run_id`` is asked inside the run
    (the flows pass Prefect's runtime id: this module never imports Prefect) and ``outcome``
    turns the returned value into the span's outcome attributes.
    """

    def load_default(config: list[str] | None) -> TracingSettings:
        from driftloop.config.settings import load_settings

        return load_settings(config).tracing

    load = settings or load_default

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not _state.configured:
                config = signature.bind_partial(*args, **kwargs).arguments.get("config")
                configure_once(lambda: load(config), component="flows")
            with flow_span(flow_name, run_id()) as s:
                result = fn(*args, **kwargs)
                if s.recording and outcome is not None:
                    try:
                        s.set_many(outcome(result))
                    except Exception:  # a span attribute must never fail the flow
                        log.exception("tracing: describing the outcome of flow %s failed", flow_name)
                return result

        return wrapper

    return decorate
