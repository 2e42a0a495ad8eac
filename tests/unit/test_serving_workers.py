"""The pure parts of `driftloop serve --workers N`: one /metrics from several workers' series, the
supervisor giving up on workers that keep dying at start, the setting, and the REST source's
refusal of a URI it cannot talk to."""

from __future__ import annotations

import os

import pydantic
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftloop.adapters.registry.rest import RestModelSource, is_http
from driftloop.config.settings import ServingSettings
from driftloop.serving import shared_metrics, workers
from driftloop.serving.metrics import ServingMetrics


def _samples(text: bytes) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def _worker(requests: int, version: str) -> ServingMetrics:
    m = ServingMetrics()
    for _ in range(requests):
        m.count_request("predict", 200, version, "champion")
    m.latency.labels(version, "champion").observe(0.003)
    m.model_info.labels("m", version, "champion").set(1)
    return m


def test_metrics_of_all_workers_sum_counters_and_keep_the_live_gauges(tmp_path):
    shared_metrics.write_snapshot(_worker(3, "1").registry, tmp_path, pid=101)
    shared_metrics.write_snapshot(_worker(4, "2").registry, tmp_path, pid=102)
    shared_metrics.write_snapshot(_worker(5, "1").registry, tmp_path, pid=103)
    shared_metrics.mark_dead(tmp_path, 103)  # its counts stay, its gauges go
    answering = ServingMetrics(tmp_path)
    answering.count_request("predict", 200, "2", "champion")

    samples = _samples(answering.render())

    def requests(version: str) -> float:
        labels = {"endpoint": "predict", "status": "200", "model_version": version, "slot": "champion"}
        return samples[("driftloop_requests_total", frozenset(labels.items()))]

    assert requests("1") == 3 + 5
    assert requests("2") == 4 + 1
    bucket = {"model_version": "1", "slot": "champion", "le": "0.005"}
    assert samples[("driftloop_predict_latency_seconds_bucket", frozenset(bucket.items()))] == 2
    info = {key for key in samples if key[0] == "driftloop_model_info"}
    # Worker 101 (alive) serves v1, 102 v2; the dead 103's v1 adds nothing the live ones do not say.
    assert {dict(labels)["model_version"] for _, labels in info} == {"1", "2"}
    assert (tmp_path / f"{os.getpid()}.json").exists()  # the answering worker's own, written fresh


def test_a_dead_workers_gauges_are_dropped(tmp_path):
    shared_metrics.write_snapshot(_worker(1, "7").registry, tmp_path, pid=201)
    shared_metrics.mark_dead(tmp_path, 201)
    samples = _samples(ServingMetrics(tmp_path).render())
    assert not [key for key in samples if key[0] == "driftloop_model_info"]
    assert sum(v for (name, _), v in samples.items() if name == "driftloop_requests_total") == 1


def test_created_timestamps_take_the_earliest():
    one = [{"name": "c", "type": "counter", "help": "h", "samples": [["c_total", {}, 2.0], ["c_created", {}, 50.0]]}]
    two = [{"name": "c", "type": "counter", "help": "h", "samples": [["c_total", {}, 3.0], ["c_created", {}, 20.0]]}]
    (family,) = shared_metrics.merge([(True, one), (False, two)])
    assert {s.name: s.value for s in family.samples} == {"c_total": 5.0, "c_created": 20.0}


def test_the_supervisor_stops_when_workers_keep_failing_at_start(monkeypatch):
    monkeypatch.setattr(workers, "MAX_FAST_FAILURES", 2)
    exited: list[int] = []

    def fail(index: int) -> None:
        raise RuntimeError("cannot start")

    supervisor = workers.Supervisor(1, fail, on_exit=exited.append)
    assert supervisor.run() == 1
    assert len(exited) == 2  # each failed worker was reaped and reported
    assert supervisor.restarts == 1
    assert not supervisor.workers


def test_describe_status_names_the_signal_or_the_exit_status():
    assert workers.describe_status(9) == "killed by SIGKILL"
    assert workers.describe_status(3 << 8) == "exit status 3"


def test_workers_setting_is_at_least_one():
    assert ServingSettings().workers == 1
    with pytest.raises(pydantic.ValidationError, match="workers"):
        ServingSettings(workers=0)


def test_the_rest_source_takes_only_a_tracking_server():
    assert is_http("http://127.0.0.1:5000") and is_http("https://mlflow.example")
    assert not is_http("sqlite:///x.db")
    with pytest.raises(ValueError, match="sqlite"):
        RestModelSource("sqlite:///x.db", "m")
