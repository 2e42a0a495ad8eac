"""The serving app's Prometheus series, the per-slot children bound once per model swap, and
the monitoring verdict exported as drift gauges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from driftloop.core.types import MonitorStatus, Prediction
from driftloop.serving import shared_metrics

# json.dumps of a str is one call into the C escaper (ensure_ascii: lone surrogates stay safe).
_q = json.dumps

OVERLOADED = "overloaded"
RATE_LIMITED = "rate_limited"
SLOW_BODY = "slow_body"
REJECT_REASONS = (OVERLOADED, RATE_LIMITED, SLOW_BODY)


class ServingMetrics:
    """The app's Prometheus series, in a registry of its own (two apps in one process, as in the
    tests, never share counts). Everything a model answers is labelled by its version and slot
    (champion, canary, shadow), so a rollout can be watched per slot.

    ``shared_dir``: the folder the workers of one ``driftloop serve --workers N`` share; the
    rendered text is then all workers' (:mod:`driftloop.serving.shared_metrics`)."""

    def __init__(self, shared_dir: Path | None = None) -> None:
        self.shared_dir = shared_dir
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
        self.rejected = Counter(
            "driftloop_rejected",
            "/predict requests refused to keep the server bounded: overloaded (503: the in-flight or "
            "micro-batch queue limit), rate_limited (429: the caller's rate), slow_body (408)",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:  # every series from the start, so a rate() has a zero to start from
            self.rejected.labels(reason)

    def bind(self, version: str, slot: str, low_confidence: float) -> BoundMetrics:
        """The children of one (model version, slot)'s series, looked up once."""
        return BoundMetrics(self, version, slot, low_confidence)

    def count_request(self, endpoint: str, status: int, version: str, slot: str = "none") -> None:
        """One answered HTTP request (``driftloop_requests_total``)."""
        self.requests.labels(endpoint, str(status), version, slot).inc()

    def count_rejected(self, reason: str, status: int, version: str) -> None:
        """One /predict refused to keep the server bounded (``driftloop_rejected_total``, and the
        request in ``driftloop_requests_total`` under slot ``none``: no model answered it)."""
        self.rejected.labels(reason).inc()
        self.requests.labels("predict", str(status), version, "none").inc()

    def count_error(self, kind: str) -> None:
        """One error of ``kind`` (``driftloop_errors_total``)."""
        self.errors.labels(kind).inc()

    def render(self) -> bytes:
        """Every series in the Prometheus text format (of every worker, with a shared folder)."""
        if self.shared_dir is not None:
            return shared_metrics.render(self.registry, self.shared_dir)
        return generate_latest(self.registry)


class BoundMetrics:
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
        """One answered request: its latency, tokens, and each prediction's intent and confidence."""
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


def export_monitor_status(status: MonitorStatus | None, metrics: ServingMetrics) -> None:
    """Set the drift gauges from the monitoring flow's latest verdict (it comes with the routing:
    a registered-model tag, so no file is shared with the replicas); unchanged when there is none."""
    if status is not None:
        metrics.drift_share.set(status.share_drifted)
        metrics.drift_detected.set(1.0 if status.drift_detected else 0.0)
