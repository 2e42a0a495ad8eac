"""`driftloop serve --workers 2` on a real MLflow tracking server, read over its REST API: both
workers answer, each writes its own prediction-log part, both follow an alias move, /metrics
counts every worker's requests, SIGTERM stops them all; and the REST source's answers (routing,
load, not found, unreachable) against the same server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from driftloop.adapters.registry import CHAMPION, Registry
from driftloop.adapters.registry.rest import RestModelSource
from driftloop.core.errors import RegistryError, ServerUnreachable
from driftloop.core.types import ModelRef, RolloutState
from driftloop.models.families import get_family
from driftloop.ops.simulator import wait_ready
from tests.support import API_TOKEN, free_port
from tests.support.serving import TEXTS, metric_samples

MODEL = "serving-workers"


@pytest.fixture(scope="module")
def registry(mlflow_server) -> Registry:
    return Registry(mlflow_server, MODEL)


@pytest.fixture(scope="module")
def model(tiny_frame):
    return get_family("tfidf").fit(tiny_frame, {"max_features": 2000}, seed=0)


def test_the_rest_source_reads_routing_and_loads_the_classifier(registry, model, mlflow_server):
    source = RestModelSource(mlflow_server, MODEL)
    assert source.routing().champion is None  # no such model yet: an answer, not an error

    ref = registry.register_model(model, input_example=TEXTS[:2])
    registry.set_alias(CHAMPION, ref)
    state = RolloutState(rollout_id="r1", mode="canary", challenger=ref.version, weight=0.25, stage="canary-25")
    registry.set_rollout_state(state)

    routing = source.routing()
    assert routing.champion == ref
    assert routing.state == state == registry.routing().state
    loaded = source.load(ref)
    assert [p.intent for p in loaded.predict(TEXTS)] == [p.intent for p in model.predict(TEXTS)]

    with pytest.raises(RegistryError, match="not found") as missing:
        source.load(ModelRef(MODEL, "999"))
    assert missing.value.url == mlflow_server and not missing.value.transient
    registry.set_rollout_state(RolloutState())


def test_an_unreachable_server_is_named():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachable, match=f"MLflow tracking server.*{url}.*connection refused") as err:
        RestModelSource(url, MODEL).routing()
    assert err.value.url == url


def _predict_versions(url: str, n: int) -> list[str]:
    # A fresh connection each: the kernel hands connections, not requests, to the workers.
    versions = []
    for text in (TEXTS * (n // len(TEXTS) + 1))[:n]:
        r = httpx.post(f"{url}/predict", json={"text": text}, timeout=10)
        assert r.status_code == 200, r.text
        versions.append(r.json()["model_version"])
    return versions


def _parts(log_root: Path) -> dict[int, list[dict]]:
    """Prediction-log lines by the pid in the part's name (part-<pid>-<time>.jsonl)."""
    lines: dict[int, list[dict]] = {}
    for part in log_root.rglob("part-*.jsonl"):
        pid = int(part.name.split("-")[1])
        lines.setdefault(pid, []).extend(json.loads(line) for line in part.read_text().splitlines() if line)
    return lines


def test_two_workers_answer_log_apart_and_follow_the_alias(registry, model, mlflow_server, tmp_path):
    first = registry.register_model(model, input_example=TEXTS[:2])
    registry.set_alias(CHAMPION, first)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DRIFTLOOP__"))}
    env |= {
        "DRIFTLOOP__PROJECT__STATE_DIR": str(tmp_path / "state"),
        "DRIFTLOOP__REGISTRY__TRACKING_URI": mlflow_server,
        "DRIFTLOOP__REGISTRY__MODEL_NAME": MODEL,
        "DRIFTLOOP__SERVING__RELOAD_INTERVAL_S": "0.3",
        "DRIFTLOOP_API_TOKEN": API_TOKEN,
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "driftloop"), "serve", "--workers", "2", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    log_root = tmp_path / "state" / "logs"
    try:
        wait_ready(url, 120, proc)
        sent = 0
        # Both workers answer: each writes its own part, named by its pid.
        for _ in range(20):
            versions = _predict_versions(url, 20)
            sent += len(versions)
            assert set(versions) == {first.version}
            if len(_parts(log_root)) == 2:
                break
        workers = set(_parts(log_root))
        assert len(workers) == 2, f"one worker answered all {sent} requests"
        children = {int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()}
        assert workers == children

        second = registry.register_model(model, input_example=TEXTS[:2])
        registry.set_alias(CHAMPION, second)
        deadline = time.monotonic() + 60
        while True:  # until the move is seen on both workers' logs
            versions = _predict_versions(url, 20)
            sent += len(versions)
            moved = {pid for pid, lines in _parts(log_root).items() if lines[-1]["model_version"] == second.version}
            if moved == workers:
                break
            assert time.monotonic() < deadline, f"workers {workers - moved} still answer with {first}"
        assert _predict_versions(url, 10) == [second.version] * 10
        sent += 10

        time.sleep(1.5)  # every worker's series reach the shared folder at least once a second
        with httpx.Client(base_url=url, timeout=10) as client:
            samples = metric_samples(client)
        answered = sum(
            v
            for (name, labels), v in samples.items()
            if name == "driftloop_requests_total" and dict(labels)["endpoint"] == "predict"
        )
        assert answered == sent == sum(len(lines) for lines in _parts(log_root).values())
        info = {dict(labels)["model_version"] for (name, labels) in samples if name == "driftloop_model_info"}
        assert info == {second.version}

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]  # reaped, none orphaned
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        output = proc.stdout.read() if proc.stdout else ""
        print(output)
