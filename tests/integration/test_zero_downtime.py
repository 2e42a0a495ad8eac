"""Zero downtime through rollouts: a serving process under steady wrk load while the rollout
flow promotes a good challenger (shadow → canary 10% → canary 50% → promote → bake) and then
rolls back a failing one, back to back. Not one request may fail or go unlogged.

The server is a separate process (tests/integration/serve_app.py), so wrk, the flow and the app
never share a GIL; it is stopped with SIGTERM (uvicorn's clean shutdown closes the logs) before
the log is read. wrk runs open-ended and is stopped with SIGINT once the rollouts are done.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from driftloop.adapters import predlog, wiring
from driftloop.flows.rollout import PROMOTED, ROLLED_BACK, rollout
from driftloop.models.families import TfidfFamily
from driftloop.ops import loadgen
from driftloop.rollout import champion
from tests.support import ROOT
from tests.support.data import TINY_PARAMS
from tests.support.rollout_models import FailingClassifier
from tests.support.servers import serve_in_subprocess

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")

CONNECTIONS, THREADS = 8, 2


class WrkRun:
    """wrk in the background for an open-ended run, stopped by SIGINT (wrk then prints its usual
    summary): the load lasts exactly as long as the rollouts, however long they take."""

    def __init__(self, url: str, texts: list[str], record_dir: Path, longest_s: int = 300):
        record_dir.mkdir(parents=True, exist_ok=True)
        script = record_dir / loadgen.SCRIPT_NAME
        script.write_text(loadgen.lua_script(texts, record_dir, caller_keys=True), encoding="ascii")
        self.record_dir = record_dir
        self.proc = subprocess.Popen(
            [
                "wrk",
                "-t",
                str(THREADS),
                "-c",
                str(CONNECTIONS),
                "-d",
                f"{longest_s}s",
                "--latency",
                "--timeout",
                "5s",
                "-s",
                str(script),
                f"{url}/predict",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> loadgen.WrkResult:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        statuses, ids = loadgen.read_records(self.record_dir)
        return loadgen.parse_wrk_output(out, statuses, ids)


def overlay(tmp_path: Path, name: str, stages: list[dict]) -> str:
    # A wide latency slack: this test is about lost requests, not the latency guard. (Under wrk
    # the shadow's own prediction time, measured in a thread that waits for the GIL while the
    # event loop serves, reads several ms slower than the champion's; the guard then withdraws
    # a good challenger at shadow now and then; see bench/rollout.py.)
    body = {
        "rollout": {
            "enabled": True,
            "poll_s": 0.2,
            "stages": stages,
            "guard": {"latency_slack_ms": 25.0},
            "bake": {"min_samples": 150, "max_duration_s": 60, "baseline_samples": 300, "retrain_on_regression": False},
        }
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    # A file outside configs/ is no flow parameter (driftloop.core.overlays): it reaches the flow
    # through DRIFTLOOP_CONFIG, as the CLI hands a path on.
    return str(path)


def test_rollouts_under_load_lose_no_request(settings, banking_train, tmp_path, monkeypatch):
    labels = sorted(banking_train["label"].unique())[:6]
    rows = banking_train[banking_train["label"].isin(labels)]
    parts = wiring.build(settings)
    register = parts.registry.register_model
    v1 = register(
        TfidfFamily().fit(rows.groupby("label").head(6), TINY_PARAMS), run_name="v1", input_example=["where is my card"]
    )
    champion.move_alias(parts.registry, parts.history, "champion", v1, action="promote", reason="first", actor="test")

    def challengers():
        good = TfidfFamily().fit(rows.groupby("label").head(60), TINY_PARAMS)
        # Fails one call in four: as a canary each failure is answered by the champion instead.
        return (
            register(good, run_name="good", input_example=["where is my card"]),
            register(FailingClassifier(good, every=4), run_name="failing", input_example=["where is my card"]),
        )

    good_stages = overlay(
        tmp_path,
        "good",
        [
            {"name": "shadow", "kind": "shadow", "min_samples": 150},
            {"name": "canary-10", "kind": "canary", "weight": 0.1, "min_samples": 100},
            {"name": "canary-50", "kind": "canary", "weight": 0.5, "min_samples": 150},
        ],
    )
    bad_stages = overlay(
        tmp_path,
        "bad",
        [
            {"name": "canary-10", "kind": "canary", "weight": 0.1, "min_samples": 150},
            {"name": "canary-50", "kind": "canary", "weight": 0.5, "min_samples": 150},
        ],
    )
    texts = rows.groupby("label").tail(20)["text"].tolist()

    # The child unpickles FailingClassifier: tests.support.rollout_models must be importable there.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log_root = parts.log_root
    log_root.mkdir(parents=True, exist_ok=True)
    # The challengers are registered while the server process starts (its imports take seconds).
    with ThreadPoolExecutor(1) as pool:
        registering = pool.submit(challengers)
        with serve_in_subprocess(settings.tracking_uri, parts.registry.model_name, log_root, reload_interval_s=0.2) as (
            url,
            proc,
        ):
            v2, v3 = registering.result()
            wrk = WrkRun(url, texts, tmp_path / "wrk")
            try:
                time.sleep(1.0)  # the load is steady before the first stage begins
                monkeypatch.setenv("DRIFTLOOP_CONFIG", good_stages)
                promoted = rollout(challenger=v2.version, requested_by="test")
                monkeypatch.setenv("DRIFTLOOP_CONFIG", bad_stages)
                withdrawn = rollout(challenger=v3.version, requested_by="test")
                time.sleep(1.0)  # and still on after the last routing change reached the replica
            finally:
                load = wrk.stop()
            # uvicorn drains, the lifespan closes the logs, then it re-raises the signal it caught.
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == -signal.SIGTERM

    assert promoted.result == PROMOTED, promoted.reason
    assert withdrawn.result == ROLLED_BACK and withdrawn.stage == "canary-10", withdrawn.reason
    assert "error_rate" in withdrawn.reason
    assert parts.registry.champion() == v2 and not parts.registry.rollout_state().active
    actions = [e.action for e in parts.history.entries()]
    assert actions[1:] == [
        "stage:shadow",
        "stage:canary-10",
        "stage:canary-50",
        "promote",
        "stage:canary-10",
        "rollback",
    ]

    # Not one request failed, at the HTTP level or the socket level.
    assert load.non_2xx == 0 and load.total_socket_errors == 0, load.raw
    assert set(load.statuses) == {200} and sum(load.statuses.values()) == load.requests
    assert len(load.request_ids) == load.requests > 1000

    every = predlog.read_predictions(log_root, include_shadow=True, include_errors=True)
    assert every.attrs[predlog.SKIPPED_LINES] == 0
    answered = predlog.read_predictions(log_root)  # what users got: no shadow, no failed lines
    assert answered["request_id"].is_unique
    missing = load.request_ids - set(answered["request_id"])
    assert not missing, f"{len(missing)} of {load.requests} answered requests are not in the log"
    # wrk stops on SIGINT without counting the requests still in flight, which the server may
    # still answer and log: at most one per connection more than wrk recorded.
    assert load.requests <= len(answered) <= load.requests + CONNECTIONS
    # Each slot really served: v2 as shadow, then canary, then champion; v3's failures were
    # logged against the canary and those callers were answered by the champion.
    slots = every.groupby(["slot", "model_version"]).size().to_dict()
    assert slots[("shadow", "2")] >= 150 and slots[("canary", "2")] >= 100 and slots[("champion", "2")] >= 150
    failed = every[every["error"] != ""]
    assert len(failed) >= 1 and set(zip(failed["slot"], failed["model_version"], strict=True)) == {("canary", "3")}
    assert (answered["model_version"] == "3").any(), "the failing canary did answer some callers"
