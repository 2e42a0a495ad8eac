"""Tracing: spans of the real serving app (in-memory exporter), the flow-run span, how the
exporter is chosen, and one real OTLP/HTTP export to a loopback server."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from driftloop.adapters import tracing
from driftloop.config.settings import ServingSettings, TracingSettings
from driftloop.serving.app import create_app
from tests.support import AUTH
from tests.support.fakes import FakeModel, FakeSource, ref

OTEL_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED")


@pytest.fixture(autouse=True)
def _clean_tracing(monkeypatch):
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    tracing.shutdown()
    yield
    tracing.shutdown()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    assert tracing.configure(TracingSettings(), exporter=exporter) is True
    return exporter


def only(exporter: InMemorySpanExporter, name: str):
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


class Words(FakeModel):
    """Predicts like the fake, counts tokens as its own tokenizer would (characters here)."""

    def count_tokens(self, text):
        return len(text)


class Broken(FakeModel):
    def predict(self, texts):
        if texts != ["warm up"]:
            raise ValueError("cannot score this")
        return super().predict(texts)


@pytest.fixture
def source():
    src = FakeSource()
    src.ref = ref("3")
    return src


@pytest.fixture
def client(source, tmp_path):
    with TestClient(create_app(ServingSettings(), source, tmp_path)) as c:
        yield c


# -- serving -------------------------------------------------------------------------------------


def test_a_predict_request_is_one_server_span_with_its_request_id_version_and_tokens(spans, client):
    response = client.post("/predict", json={"texts": ["my card is lost", "what is the rate"]})
    assert response.status_code == 200
    request_id = response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    span = only(spans, "POST /predict")
    a = span.attributes
    assert span.kind == SpanKind.SERVER and span.status.status_code == StatusCode.UNSET
    assert a["driftloop.request_id"] == request_id
    assert a["driftloop.model_version"] == "3" == response.json()["model_version"]
    assert a["driftloop.slot"] == "champion"
    assert a["driftloop.batch_size"] == 2
    assert a["driftloop.tokens"] == 4 + 4  # the fake model's own count: whitespace words
    assert list(a["driftloop.prediction_ids"]) == [p["request_id"] for p in response.json()["predictions"]]
    assert a["http.response.status_code"] == 200
    assert a["driftloop.latency_ms"] > 0


def test_tokens_are_counted_by_the_model_when_it_can_else_as_words(spans, source, tmp_path):
    class NoCounter:
        family, labels = "plain", ("a",)

        def predict(self, texts):
            return FakeModel("x").predict(texts)

    for model, expected in ((Words("3"), len("my card is lost")), (NoCounter(), 4)):
        source.load = lambda r, m=model: m
        spans.clear()
        with TestClient(create_app(ServingSettings(), source, tmp_path)) as c:
            assert c.post("/predict", json={"text": "my card is lost"}).status_code == 200
        assert only(spans, "POST /predict").attributes["driftloop.tokens"] == expected


def test_an_incoming_request_id_is_kept_and_a_strange_one_replaced(spans, client):
    kept = client.post("/predict", json={"text": "hi there"}, headers={"X-Request-Id": "lb-42.a:b_c"})
    assert kept.headers["X-Request-Id"] == "lb-42.a:b_c"
    odd = client.post("/predict", json={"text": "hi there"}, headers={"X-Request-Id": "a b<script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["X-Request-Id"])
    ids = [s.attributes["driftloop.request_id"] for s in spans.get_finished_spans()]
    assert ids == ["lb-42.a:b_c", odd.headers["X-Request-Id"]]


def test_the_route_path_traces_like_the_fast_path(spans, source, tmp_path):
    app = create_app(ServingSettings(), source, tmp_path)

    @app.middleware("http")  # any middleware makes the fast path step aside
    async def passthrough(request, call_next):
        return await call_next(request)

    with TestClient(app) as c:
        response = c.post("/predict", json={"text": "lost card"}, headers={"X-Request-Id": "abc"})
    assert response.status_code == 200 and response.headers["X-Request-Id"] == "abc"
    span = only(spans, "POST /predict")
    assert span.attributes["driftloop.request_id"] == "abc" and span.attributes["driftloop.tokens"] == 2


def test_a_failing_model_marks_the_span_as_an_error(spans, source, tmp_path):
    source.load = lambda r: Broken(r.version)
    with TestClient(create_app(ServingSettings(), source, tmp_path)) as c:
        response = c.post("/predict", json={"text": "anything"})
    assert response.status_code == 500
    span = only(spans, "POST /predict")
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["http.response.status_code"] == 500
    assert span.attributes["driftloop.model_version"] == "3"
    assert any(e.name == "exception" and "cannot score this" in e.attributes["exception.message"] for e in span.events)


def test_a_bad_request_is_traced_but_not_an_error(spans, client):
    assert client.post("/predict", json={"txt": "x"}).status_code == 422
    span = only(spans, "POST /predict")
    assert span.attributes["http.response.status_code"] == 422
    assert span.status.status_code == StatusCode.UNSET


def test_feedback_is_a_span_naming_the_prediction_it_labels(spans, client):
    answer = client.post("/predict", json={"text": "lost card"}).json()["predictions"][0]
    response = client.post("/feedback", json={"request_id": answer["request_id"], "label": "b"}, headers=AUTH)
    assert response.status_code == 202
    span = only(spans, "POST /feedback")
    a = span.attributes
    assert a["driftloop.request_id"] == response.headers["X-Request-Id"]
    assert a["driftloop.feedback.request_id"] == answer["request_id"]
    assert a["driftloop.model_version"] == "3" and a["driftloop.slot"] == "champion"
    assert a["driftloop.feedback.correct"] is False  # the fake answered "a"
    assert a["http.response.status_code"] == 202
    # Neither the label nor the text leaves in a span (the OTLP exporter may be plain HTTP).
    assert "b" not in {v for v in a.values() if isinstance(v, str)} and "driftloop.feedback.label" not in a


def test_a_refused_feedback_is_traced_as_401(spans, client):
    assert client.post("/feedback", json={"request_id": "r", "label": "b"}).status_code == 401
    assert only(spans, "POST /feedback").attributes["http.response.status_code"] == 401


# -- off by default ------------------------------------------------------------------------------


def test_without_an_endpoint_nothing_is_installed_or_exported(client):
    global_before = trace.get_tracer_provider()
    assert tracing.configure(TracingSettings()) is False
    assert not tracing.enabled() and tracing.exporter() is None and tracing.processor() is None
    with tracing.span("anything") as span:
        assert span.recording is False
    response = client.post("/predict", json={"text": "lost card"})
    assert response.status_code == 200 and response.headers["X-Request-Id"]
    # OpenTelemetry's global provider is never touched (set-once; ours is held in tracing.py).
    assert trace.get_tracer_provider() is global_before


@pytest.mark.parametrize(
    ("setting", "env", "expected"),
    [
        (None, {}, None),
        ("http://collector:4318", {}, "http://collector:4318/v1/traces"),
        ("http://collector:4318/", {}, "http://collector:4318/v1/traces"),
        ("https://c.example/otlp/v1/traces", {}, "https://c.example/otlp/v1/traces"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"}, "http://env:4318/v1/traces"),
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom",
            },
            "http://traces:9999/custom",
        ),
        ("http://setting:4318", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"}, "http://setting:4318/v1/traces"),
        ("http://setting:4318", {"OTEL_SDK_DISABLED": "true"}, None),
    ],
    ids=["off", "base", "slash", "full-url", "env-base", "env-traces-wins", "setting-wins", "sdk-disabled"],
)
def test_the_endpoint_comes_from_the_setting_then_the_standard_variables(setting, env, expected):
    assert tracing.resolve_endpoint(TracingSettings(otlp_endpoint=setting), env) == expected


def test_an_endpoint_installs_a_batching_otlp_http_exporter():
    assert tracing.configure(TracingSettings(otlp_endpoint="http://127.0.0.1:1"), component="serving")
    assert isinstance(tracing.exporter(), OTLPSpanExporter)
    assert isinstance(tracing.processor(), BatchSpanProcessor)
    assert tracing.endpoint() == "http://127.0.0.1:1/v1/traces"


def test_the_standard_variable_alone_turns_tracing_on(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    assert tracing.configure(TracingSettings())
    assert tracing.endpoint() == "http://127.0.0.1:1/v1/traces"


def test_a_wrong_endpoint_setting_names_the_key():
    with pytest.raises(ValueError, match=r"tracing\.otlp_endpoint"):
        TracingSettings(otlp_endpoint="collector:4318")


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, bytes]]] = []  # shared by the handler instances

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_spans_reach_an_otlp_http_collector_on_loopback():
    _Collector.received = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = TracingSettings(otlp_endpoint=f"http://127.0.0.1:{server.server_port}", service_name="dl-test")
        assert tracing.configure(cfg, component="serving")
        with tracing.span("POST /predict", {"driftloop.request_id": "r-1"}, kind="server") as span:
            span.set("driftloop.tokens", 7)
        tracing.shutdown()  # flushes the batch processor: the export happens now
    finally:
        server.shutdown()
        thread.join()
    [(path, content_type, body)] = _Collector.received
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = request.resource_spans
    resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert resource["service.name"] == "dl-test" and resource["driftloop.component"] == "serving"
    [exported] = [s for scope in resource_spans.scope_spans for s in scope.spans]
    attributes = {kv.key: kv.value for kv in exported.attributes}
    assert exported.name == "POST /predict"
    assert attributes["driftloop.request_id"].string_value == "r-1"
    assert attributes["driftloop.tokens"].int_value == 7


# -- flow runs -----------------------------------------------------------------------------------


def test_a_flow_run_is_a_span_with_its_run_id_and_outcome_and_subflows_nest(spans):
    @tracing.traced_flow("inner", run_id=lambda: "run-2", outcome=lambda out: {"driftloop.result": out})
    def inner(config=None):
        return "promoted"

    @tracing.traced_flow("outer", run_id=lambda: "run-1", outcome=lambda out: {"driftloop.retrain": out})
    def outer(config=None):
        inner(config=config)
        return True

    assert outer() is True
    parent, child = only(spans, "flow outer"), only(spans, "flow inner")
    assert parent.attributes["driftloop.flow.name"] == "outer"
    assert parent.attributes["driftloop.flow.run_id"] == "run-1"
    assert parent.attributes["driftloop.retrain"] is True
    assert child.attributes["driftloop.result"] == "promoted"
    assert child.parent.span_id == parent.context.span_id
    assert child.context.trace_id == parent.context.trace_id


def test_a_failing_flow_run_is_an_error_span_and_still_raises(spans):
    @tracing.traced_flow("broken", run_id=lambda: "run-3", outcome=lambda out: {"never": 1})
    def broken():
        raise RuntimeError("no data")

    with pytest.raises(RuntimeError, match="no data"):
        broken()
    span = only(spans, "flow broken")
    assert span.status.status_code == StatusCode.ERROR
    assert "never" not in span.attributes


def test_a_broken_outcome_description_never_fails_the_flow(spans):
    @tracing.traced_flow("f", run_id=lambda: "r", outcome=lambda out: out["missing"])
    def f():
        return {}

    assert f() == {}
    assert only(spans, "flow f").attributes["driftloop.flow.run_id"] == "r"


def test_the_first_flow_configures_tracing_from_its_own_config_once():
    seen: list = []

    def settings(config):
        seen.append(config)
        return TracingSettings()  # no endpoint: configured, and off

    @tracing.traced_flow("f", run_id=lambda: "r", settings=settings)
    def f(x, config=None):
        return x

    assert f(1, config=["rollout"]) == 1 and f(2) == 2
    assert seen == [["rollout"]] and not tracing.enabled()


def test_a_flow_keeps_a_provider_configured_before_it(spans):
    @tracing.traced_flow("f", run_id=lambda: "r", settings=lambda config: pytest.fail("reconfigured"))
    def f(config=None):
        return 1

    f()
    assert only(spans, "flow f")
