"""Rollout routing through real HTTP: the desired split kept with the registry, converged to by
two separate server processes (and by one restarted mid-rollout), sticky callers, shadow answers
logged but never returned, and a failing canary that costs callers nothing."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftloop.adapters.predlog import read_predictions
from driftloop.adapters.registry import CHAMPION, Registry
from driftloop.config.settings import ServingSettings
from driftloop.core.types import ModelRef, RolloutState
from driftloop.models.families import TfidfFamily
from driftloop.serving.app import create_app
from tests.support.data import TINY_PARAMS, tiny_frame
from tests.support.rollout_models import FailingClassifier
from tests.support.servers import serve_in_subprocess, serve_in_thread

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "pin_blocked"]
TEXTS = [
    "my card has not arrived yet",
    "I lost my card in the street",
    "what is the exchange rate",
    "my top up did not work",
    "my pin is blocked",
]
CFG = ServingSettings(reload_interval_s=0.2, fsync_interval_s=0.2)


@pytest.fixture(scope="module")
def models(banking_train):
    small = TfidfFamily().fit(tiny_frame(banking_train, LABELS, per_label=4), TINY_PARAMS)
    big = TfidfFamily().fit(tiny_frame(banking_train, LABELS, per_label=20), TINY_PARAMS)
    return small, big


def two_versions(tracking_uri, artifact_root, name: str, models) -> tuple[Registry, str, str]:
    registry = Registry(tracking_uri, name, artifact_root=artifact_root)
    v1 = registry.register_model(models[0], input_example=TEXTS[:2])
    v2 = registry.register_model(models[1], input_example=TEXTS[:2])
    registry.set_alias(CHAMPION, v1)
    return registry, v1.version, v2.version


R1 = RolloutState(rollout_id="r-1").fingerprint  # what /routing shows of rollout r-1


def routing(url: str) -> dict:
    return httpx.get(f"{url}/routing", timeout=10).json()


def wait_for(check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s}s: {check.__doc__ or check}")
        time.sleep(0.1)


def answer_versions(url: str, callers: list[str]) -> dict[str, str]:
    with httpx.Client(base_url=url, timeout=10) as client:
        return {
            c: client.post("/predict", json={"text": TEXTS[i % len(TEXTS)]}, headers={"X-Caller-Id": c}).json()[
                "model_version"
            ]
            for i, c in enumerate(callers)
        }


def test_two_replicas_converge_to_the_split_and_a_restarted_one_comes_back_to_it(
    tracking_uri, artifact_root, models, tmp_path
):
    registry, v1, v2 = two_versions(tracking_uri, artifact_root, "routing-converge", models)
    logs = [tmp_path / "a", tmp_path / "b"]
    for log in logs:
        log.mkdir()
    state = RolloutState(
        rollout_id="r-1",
        mode="canary",
        challenger=v2,
        weight=0.3,
        stage="canary-30",
        since="2026-01-01T00:00:00+00:00",
        actor="test",
    )
    callers = [f"caller-{i}" for i in range(200)]
    with (
        serve_in_subprocess(tracking_uri, registry.model_name, logs[0], 0.2) as (url_a, _),
        serve_in_subprocess(tracking_uri, registry.model_name, logs[1], 0.2) as (url_b, proc_b),
    ):
        assert routing(url_a)["state"]["mode"] == "none" and routing(url_b)["slots"] == {"champion": v1}
        registry.set_rollout_state(state)
        for url in (url_a, url_b):
            wait_for(lambda url=url: routing(url)["state"]["rollout"] == R1)
            assert routing(url)["slots"] == {"champion": v1, "canary": v2}
        seen_a, seen_b = answer_versions(url_a, callers), answer_versions(url_b, callers)
        assert seen_a == seen_b, "a caller gets the same version from every replica"
        share = sum(v == v2 for v in seen_a.values()) / len(callers)
        assert 0.2 < share < 0.4
        metrics = httpx.get(f"{url_a}/metrics").text
        weights = {
            tuple(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
            if s.name == "driftloop_traffic_weight"
        }
        assert weights[(("model_version", v2), ("slot", "canary"))] == pytest.approx(0.3)
        proc_b.kill()
        proc_b.wait()
    # A replica started mid-rollout comes up with the same split (it is kept with the registry,
    # not in any process), and sends each caller where the others did.
    with serve_in_subprocess(tracking_uri, registry.model_name, logs[1], 0.2) as (url_b, _):
        assert routing(url_b)["state"]["rollout"] == R1
        assert "r-1" not in httpx.get(f"{url_b}/routing").text  # the id salts the canary hash
        assert "r-1" not in httpx.get(f"{url_b}/metrics").text
        assert answer_versions(url_b, callers) == seen_a
        registry.set_alias(CHAMPION, ModelRef(registry.model_name, v2))
        registry.set_rollout_state(RolloutState(actor="test"))
        wait_for(lambda: routing(url_b)["slots"] == {"champion": v2})


def test_shadow_answers_are_logged_never_returned(tracking_uri, artifact_root, models, tmp_path):
    registry, v1, v2 = two_versions(tracking_uri, artifact_root, "routing-shadow", models)
    registry.set_rollout_state(RolloutState(rollout_id="s-1", mode="shadow", challenger=v2, stage="shadow"))
    with serve_in_thread(create_app(CFG, registry, tmp_path)) as url:
        assert routing(url)["slots"] == {"champion": v1, "shadow": v2}
        with httpx.Client(base_url=url, timeout=10) as client:
            bodies = [client.post("/predict", json={"texts": TEXTS}).json() for _ in range(20)]
        assert {b["model_version"] for b in bodies} == {v1}
        ids = {p["request_id"] for b in bodies for p in b["predictions"]}
        metrics = httpx.get(f"{url}/metrics").text
    logged = read_predictions(tmp_path, include_shadow=True)
    shadow = logged[logged["slot"] == "shadow"]
    answered = logged[logged["slot"] == "champion"]
    assert set(answered["request_id"]) == ids and set(answered["model_version"]) == {v1}
    assert set(shadow["request_id"]) == ids, "every answered request was mirrored (shut down drains the queue)"
    assert set(shadow["model_version"]) == {v2}
    assert read_predictions(tmp_path)["slot"].eq("champion").all(), "readers leave shadow lines out by default"
    assert f'driftloop_shadow_comparisons_total{{agree="true",model_version="{v2}"}}' in metrics


def test_a_failing_canary_is_answered_by_the_champion_and_logged_against_the_canary(
    tracking_uri, artifact_root, models, tmp_path
):
    registry = Registry(tracking_uri, "routing-failing", artifact_root=artifact_root)
    v1 = registry.register_model(models[0], input_example=TEXTS[:2])
    v2 = registry.register_model(FailingClassifier(models[1], every=3), input_example=TEXTS[:1])
    registry.set_alias(CHAMPION, v1)
    registry.set_rollout_state(
        RolloutState(rollout_id="f-1", mode="canary", challenger=v2.version, weight=0.99, stage="canary")
    )
    with serve_in_thread(create_app(CFG, registry, tmp_path)) as url, httpx.Client(base_url=url, timeout=10) as client:
        responses = [client.post("/predict", json={"text": TEXTS[i % 5]}) for i in range(60)]
    assert all(r.status_code == 200 for r in responses)
    versions = [r.json()["model_version"] for r in responses]
    assert versions.count(v2.version) > 10 and versions.count(v1.version) > 10
    everything = read_predictions(tmp_path, include_errors=True)
    failed = everything[everything["error"] != ""]
    assert len(failed) >= 10 and set(failed["slot"]) == {"canary"} and set(failed["model_version"]) == {v2.version}
    answered = read_predictions(tmp_path)
    assert len(answered) == 60, "each request has exactly one answer in the log"
    assert set(answered["request_id"]) == {r.json()["predictions"][0]["request_id"] for r in responses}
