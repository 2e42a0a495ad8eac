"""The shipped Prometheus rules and config with the real tools: promtool checks and unit tests, then
a real Prometheus on loopback scraping the real serving app (tiny model, real MLflow registry)."""

from __future__ import annotations

import json
import re
import subprocess
import time

import httpx
import pytest
import yaml

from driftloop.adapters.registry import CHAMPION, Registry
from driftloop.config.settings import ServingSettings
from driftloop.models.families import TfidfFamily
from driftloop.serving.app import create_app
from tests.support import ROOT, bound_socket
from tests.support.data import TINY_PARAMS, tiny_frame
from tests.support.servers import serve_in_thread

ALERTS = ROOT / "infra/prometheus/alerts.yml"
DASHBOARD = ROOT / "infra/grafana/driftloop-rollout.json"
JOB = "driftloop-serving"
LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "pin_blocked"]
TEXTS = ["my card has not arrived yet", "I lost my card", "what is the exchange rate", "my pin is blocked"]


def promtool(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def scrape_config(target: str, interval: str) -> dict:
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}],
    }


# -- the tools ---------------------------------------------------------------------------------


def test_rules_pass_promtool_checks_and_their_unit_tests(tmp_path):
    assert "SUCCESS" in promtool("check", "rules", str(ALERTS)).stdout
    # The shipped config, whose rule_files path is relative to its own folder.
    promtool("check", "config", "infra/prometheus.yml")
    promtool("check", "config", "infra/prometheus/compose.yml")  # the docker-compose variant
    generated = tmp_path / "prometheus.yml"
    generated.write_text(yaml.safe_dump(scrape_config("127.0.0.1:8000", "500ms")))
    promtool("check", "config", str(generated))
    promtool("test", "rules", "infra/prometheus/alerts_test.yml")


def test_the_shipped_config_scrapes_loopback_and_loads_the_alerts():
    config = yaml.safe_load((ROOT / "infra/prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "5s"
    assert config["rule_files"] == ["prometheus/alerts.yml"]


# -- a real Prometheus scraping the real app ---------------------------------------------------


@pytest.fixture
def served(banking_train, tracking_uri, artifact_root, tmp_path):
    registry = Registry(tracking_uri, "prometheus-scrape", artifact_root=artifact_root)
    model = TfidfFamily().fit(tiny_frame(banking_train, LABELS), TINY_PARAMS)
    ref = registry.register_model(model, input_example=TEXTS[:2])
    registry.set_alias(CHAMPION, ref)
    app = create_app(ServingSettings(reload_interval_s=1.0), registry, tmp_path / "logs")
    with serve_in_thread(app) as url:
        yield url, ref


@pytest.fixture
def prometheus(served, tmp_path):
    """Prometheus on a free loopback port scraping the app every 0.5 s; yields its base URL."""
    url, _ = served
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(url.removeprefix("http://"), "500ms")))
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()  # Prometheus binds it itself; a lost race shows as its exit below
    log = tmp_path / "prometheus.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"prometheus exited ({proc.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"prometheus not ready in 20s:\n{log.read_text()}"
            try:
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def api(base: str, path: str, **params) -> dict | list:
    body = httpx.get(f"{base}/api/v1/{path}", params=params, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]


def test_prometheus_scrapes_the_app_and_loads_the_alerts(served, prometheus):
    url, ref = served
    with httpx.Client(base_url=url, timeout=30) as client:
        for text in TEXTS * 3:
            assert client.post("/predict", json={"text": text}).status_code == 200

    deadline = time.monotonic() + 30
    while True:
        series = api(prometheus, "query", query="driftloop_requests_total")["result"]
        mine = [
            s
            for s in series
            if s["metric"].get("job") == JOB
            and s["metric"].get("endpoint") == "predict"
            and s["metric"].get("status") == "200"
            and s["metric"].get("model_version") == ref.version
            and s["metric"].get("slot") == "champion"
        ]
        if mine and sum(float(s["value"][1]) for s in mine) >= len(TEXTS) * 3:
            break
        assert time.monotonic() < deadline, f"the app's requests never reached Prometheus: {series}"
        time.sleep(0.25)

    # the per-slot traffic split the dashboard shows
    weights = api(prometheus, "query", query='driftloop_traffic_weight{slot="champion"}')["result"]
    assert [float(w["value"][1]) for w in weights if w["metric"].get("model_version") == ref.version] == [1.0]

    [target] = api(prometheus, "targets")["activeTargets"]
    assert target["labels"]["job"] == JOB and target["health"] == "up", target

    groups = {g["name"]: g for g in api(prometheus, "rules")["groups"]}
    assert {"driftloop-alerts", "driftloop-recording"} <= set(groups)
    alerts = {r["name"] for r in groups["driftloop-alerts"]["rules"] if r["type"] == "alerting"}
    assert {"DriftloopHighErrorRate", "DriftloopDriftDetected", "DriftloopNoModelServing"} <= alerts
    assert all(r["health"] != "err" for g in groups.values() for r in g["rules"]), groups


def test_every_dashboard_query_is_valid_promql(prometheus):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] == 39
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    recorded = {r["record"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "record" in r}
    for expr in exprs:
        # Grafana fills $__rate_interval in; a bad query is a 400 from the API.
        response = httpx.get(
            f"{prometheus}/api/v1/query", timeout=10, params={"query": expr.replace("$__rate_interval", "1m")}
        )
        assert response.status_code == 200, f"{expr}: {response.text}"
        for name in re.findall(r"\bslot:[a-z_0-9]+:[a-z_0-9]+", expr):
            assert name in recorded, f"{expr} uses {name}, which no rule records"


def test_alerts_and_dashboard_use_only_the_apps_metric_names():
    # The serving app's series (and those of the monitor); a typo would silently never match.
    known = {
        "driftloop_requests_total",
        "driftloop_predict_latency_seconds",
        "driftloop_predict_latency_seconds_bucket",
        "driftloop_predictions_total",
        "driftloop_low_confidence_total",
        "driftloop_traffic_weight",
        "driftloop_shadow_comparisons_total",
        "driftloop_shadow_dropped_total",
        "driftloop_feedback_labels_total",
        "driftloop_model_info",
        "driftloop_rollout_info",
        "driftloop_drift_share",
        "driftloop_drift_detected",
        "driftloop_errors_total",
    }
    text = ALERTS.read_text() + DASHBOARD.read_text()
    used = set(re.findall(r"(?<![:\w])driftloop_[a-z_]+", text))
    assert used <= known, used - known
