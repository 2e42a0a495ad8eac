"""The serving app through real HTTP: uvicorn on loopback, a real MLflow registry on SQLite, tiny
real TF-IDF models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from driftloop.adapters.predlog import (
    SKIPPED_LINES,
    join_feedback,
    read_feedback,
    read_predictions,
)
from driftloop.adapters.registry import CHAMPION, Registry
from driftloop.config.settings import ServingSettings
from driftloop.core.types import ModelRef
from driftloop.models.families import TextClassifier, TfidfFamily
from driftloop.ops.simulator import wait_ready
from driftloop.serving.app import create_app
from driftloop.serving.service import INLINE_TEXTS
from tests.support import AUTH
from tests.support.data import TINY_PARAMS, tiny_frame
from tests.support.servers import serve_in_subprocess, serve_in_thread
from tests.support.serving import LABELS_V1, TEXTS, metric_samples, publish, sample

NEW_LABEL = "apple_pay_or_google_pay"
CFG = ServingSettings(reload_interval_s=0.2, max_text_chars=200, max_batch=16, fsync_interval_s=0.2)


@pytest.fixture(scope="module")
def v1_model(banking_train) -> TextClassifier:
    return TfidfFamily().fit(tiny_frame(banking_train, LABELS_V1), TINY_PARAMS)


@pytest.fixture(scope="module")
def v2_model(banking_train) -> TextClassifier:
    return TfidfFamily().fit(tiny_frame(banking_train, [*LABELS_V1, NEW_LABEL]), TINY_PARAMS)


@pytest.fixture(scope="module")
def registry_for(tracking_uri, artifact_root):
    def make(name: str) -> Registry:
        return Registry(tracking_uri, name, artifact_root=artifact_root)

    return make


@dataclass
class Served:
    url: str
    client: httpx.Client
    log_root: Path
    ref: ModelRef
    model: TextClassifier


@pytest.fixture(scope="module")
def served(registry_for, v1_model, tmp_path_factory):
    registry = registry_for("serving-basic")
    ref = publish(registry, v1_model)
    log_root = tmp_path_factory.mktemp("logs-basic")
    with (
        serve_in_thread(create_app(CFG, registry, log_root)) as url,
        httpx.Client(base_url=url, timeout=30, headers=AUTH) as client,
    ):
        yield Served(url, client, log_root, ref, v1_model)


def predict(client: httpx.Client, payload) -> httpx.Response:
    return client.post("/predict", json=payload)


# -- answers -------------------------------------------------------------------------------------


def test_one_text_is_answered_by_the_registered_champion(served):
    response = predict(served.client, {"text": TEXTS[0]})
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == served.ref.version
    [answer] = body["predictions"]
    expected = served.model.predict([TEXTS[0]])[0]
    assert answer["intent"] == expected.intent
    assert answer["confidence"] == pytest.approx(expected.confidence, abs=1e-6)
    assert uuid.UUID(hex=answer["request_id"]).version == 4
    assert len(answer["request_id"]) == 32


@pytest.mark.parametrize("n", [3, INLINE_TEXTS + 4], ids=["inline", "worker-thread"])
def test_a_batch_gets_one_answer_and_one_id_per_text(served, n):
    texts = TEXTS[:n]
    response = predict(served.client, {"texts": texts})
    assert response.status_code == 200
    answers = response.json()["predictions"]
    assert [a["intent"] for a in answers] == [p.intent for p in served.model.predict(texts)]
    assert len({a["request_id"] for a in answers}) == n


def test_every_answer_is_in_the_prediction_log(served):
    texts = ["où est ma carte ? 💳", 'quotes " and \\ backslash\nnewline', TEXTS[2]]
    answers = predict(served.client, {"texts": texts}).json()["predictions"]
    logged = read_predictions(served.log_root).set_index("request_id")
    for text, answer in zip(texts, answers, strict=True):
        row = logged.loc[answer["request_id"]]
        assert row["text"] == text
        assert row["intent"] == answer["intent"]
        assert row["confidence"] == pytest.approx(answer["confidence"])
        assert row["model_version"] == served.ref.version
        assert row["tokens"] == served.model.count_tokens(text)
        assert row["latency_ms"] > 0


def test_a_lone_surrogate_is_answered_and_logged(served):
    # Valid JSON, not encodable as UTF-8: must not crash the response or the log write.
    response = served.client.post(
        "/predict", content=b'{"text": "card \\ud800 arrived"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    rid = response.json()["predictions"][0]["request_id"]
    logged = read_predictions(served.log_root).set_index("request_id")
    assert logged.loc[rid, "text"] == "card \ud800 arrived"


def test_feedback_is_accepted_and_joined_to_its_prediction(served):
    rid = predict(served.client, {"text": TEXTS[1]}).json()["predictions"][0]["request_id"]
    first = served.client.post("/feedback", json={"request_id": rid, "label": "lost_or_stolen_card"})
    # A label the model has never seen: that is how new intents arrive.
    second = served.client.post("/feedback", json={"request_id": rid, "label": NEW_LABEL})
    assert first.status_code == second.status_code == 202
    feedback = read_feedback(served.log_root)
    assert list(feedback[feedback["request_id"] == rid]["label"]) == ["lost_or_stolen_card", NEW_LABEL]
    joined = join_feedback(read_predictions(served.log_root), feedback).set_index("request_id")
    assert joined.loc[rid, "label"] == NEW_LABEL


def test_health_and_ready_name_the_serving_version(served):
    health = served.client.get("/health")
    ready = served.client.get("/ready")
    assert health.status_code == ready.status_code == 200
    assert health.json()["model_version"] == ready.json()["model_version"] == served.ref.version


def test_metrics_count_requests_predictions_and_errors_by_version(served):
    version = served.ref.version
    before = metric_samples(served.client)
    texts = TEXTS[:4]
    answers = predict(served.client, {"texts": texts}).json()["predictions"]
    predict(served.client, {"text": ""})
    served.client.post("/feedback", json={"request_id": answers[0]["request_id"], "label": "x"})
    after = metric_samples(served.client)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    slot = {"model_version": version, "slot": "champion"}
    assert delta("driftloop_requests_total", endpoint="predict", status="200", **slot) == 1
    assert delta("driftloop_requests_total", endpoint="predict", status="422", **slot) == 1
    assert delta("driftloop_errors_total", kind="invalid_request") == 1
    assert delta("driftloop_feedback_total") == 1
    # the label "x" judges the first answer, which was not "x"
    assert delta("driftloop_feedback_labels_total", correct="false", **slot) == 1
    intents = [a["intent"] for a in answers]
    for intent in set(intents):
        assert delta("driftloop_predictions_total", intent=intent, **slot) == intents.count(intent)
    assert delta("driftloop_predict_latency_seconds_count", **slot) == 1
    assert delta("driftloop_prediction_confidence_count", **slot) == len(texts)
    low = sum(a["confidence"] < 0.5 for a in answers)
    assert delta("driftloop_low_confidence_total", **slot) == low
    assert delta("driftloop_request_tokens_sum", **slot) == sum(served.model.count_tokens(t) for t in texts)
    assert sample(after, "driftloop_model_info", model_name=served.ref.name, **slot) == 1
    assert sample(after, "driftloop_traffic_weight", **slot) == 1.0


# -- bad requests --------------------------------------------------------------------------------

BAD_PREDICTS = [
    ("empty-text", json.dumps({"text": ""}), 422, "text"),
    ("whitespace", json.dumps({"text": " \n\t "}), 422, "text"),
    ("oversized", json.dumps({"text": "a" * 201}), 422, "limit of 200"),
    ("too-many", json.dumps({"texts": ["hi"] * 17}), 422, "texts"),
    ("empty-list", json.dumps({"texts": []}), 422, "texts"),
    ("bad-item", json.dumps({"texts": ["fine", "  "]}), 422, "texts[1]"),
    ("item-type", json.dumps({"texts": ["fine", 3]}), 422, "texts[1]"),
    ("text-type", json.dumps({"text": 42}), 422, "text: expected a string"),
    ("text-null", json.dumps({"text": None}), 422, "text: expected a string"),
    ("texts-type", json.dumps({"texts": "hello"}), 422, "texts: expected a list"),
    ("missing", json.dumps({}), 422, "text: missing"),
    ("unknown-field", json.dumps({"txt": "hello"}), 422, "txt"),
    ("both", json.dumps({"text": "a", "texts": ["b"]}), 422, "not both"),
    ("not-object", json.dumps(["hello"]), 422, "expected a JSON object"),
    ("invalid-json", '{"text": "unterminated', 400, "not valid JSON"),
    ("empty-body", "", 400, "body"),
    ("non-utf8", b'{"text": "caf\xe9 \xff"}', 400, "UTF-8"),
]


@pytest.mark.parametrize(("body", "status", "message"), [b[1:] for b in BAD_PREDICTS], ids=[b[0] for b in BAD_PREDICTS])
def test_a_bad_predict_gets_a_4xx_naming_the_problem(served, body, status, message):
    content = body if isinstance(body, bytes) else body.encode()
    response = served.client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    detail = response.json()["detail"]
    assert message in detail
    assert response.json()["errors"], "every problem is listed with its field"


def test_a_body_beyond_any_valid_request_is_refused_unread(served):
    response = served.client.post("/predict", content=b"x" * 1_000_000)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


BAD_FEEDBACK = [
    ("missing-label", {"request_id": "abc"}, "label: missing"),
    ("empty-label", {"request_id": "abc", "label": " "}, "label"),
    ("id-type", {"request_id": 7, "label": "x"}, "request_id: expected a string"),
    ("long-label", {"request_id": "abc", "label": "x" * 500}, "label"),
    ("unknown-field", {"request_id": "abc", "label": "x", "extra": 1}, "extra"),
]


@pytest.mark.parametrize(("payload", "message"), [b[1:] for b in BAD_FEEDBACK], ids=[b[0] for b in BAD_FEEDBACK])
def test_bad_feedback_gets_a_422_naming_the_field(served, payload, message):
    response = served.client.post("/feedback", json=payload)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_middleware_turns_the_direct_path_off_with_the_same_answers(registry_for, v1_model, served, tmp_path):
    class Tag:
        """A pure ASGI middleware that marks responses, to prove it saw the request."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            async def tagged(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (b"x-tag", b"1")]}
                await send(message)

            await self.app(scope, receive, tagged)

    app = create_app(CFG, registry_for("serving-basic"), tmp_path)
    app.add_middleware(Tag)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        good = predict(client, {"texts": TEXTS[:2]})
        bad = client.post("/predict", content=b'{"texts": ["ok", ""]}', headers={"content-type": "application/json"})
    reference = predict(served.client, {"texts": TEXTS[:2]})
    assert good.headers.get("x-tag") == "1"
    assert good.status_code == 200
    assert [a["intent"] for a in good.json()["predictions"]] == [a["intent"] for a in reference.json()["predictions"]]
    assert bad.status_code == 422 and "texts[1]" in bad.json()["detail"]
    logged = set(read_predictions(tmp_path)["request_id"])
    assert {a["request_id"] for a in good.json()["predictions"]} <= logged


# -- the model's life cycle ----------------------------------------------------------------------


def test_not_ready_until_a_champion_exists_then_ready(registry_for, v1_model, tmp_path):
    registry = registry_for("serving-late")
    with serve_in_thread(create_app(CFG, registry, tmp_path)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/ready").status_code == 503
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["model_version"] is None
        early = predict(client, {"text": TEXTS[0]})
        assert early.status_code == 503 and "no model" in early.json()["detail"]

        ref = publish(registry, v1_model)
        wait_ready(url, timeout_s=30)
        answer = predict(client, {"text": TEXTS[0]})
        assert answer.status_code == 200 and answer.json()["model_version"] == ref.version


def test_an_alias_move_under_load_fails_no_request(registry_for, v1_model, v2_model, tmp_path):
    registry = registry_for("serving-swap")
    v1 = publish(registry, v1_model)
    stop = threading.Event()
    results: list[list[tuple[int, str | None, list[str]]]] = [[] for _ in range(8)]

    def client_loop(k: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            i = k
            while not stop.is_set():
                i += 1
                try:
                    r = client.post("/predict", json={"texts": [TEXTS[i % len(TEXTS)], TEXTS[(i + 5) % len(TEXTS)]]})
                except httpx.HTTPError as exc:
                    results[k].append((-1, repr(exc), []))
                    continue
                body = r.json() if r.status_code == 200 else {}
                results[k].append(
                    (r.status_code, body.get("model_version"), [a["request_id"] for a in body.get("predictions", [])])
                )

    with serve_in_thread(create_app(CFG, registry, tmp_path)) as url:
        threads = [threading.Thread(target=client_loop, args=(k, url)) for k in range(8)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            v2 = registry.register_model(v2_model, input_example=TEXTS[:2])  # under load
            registry.set_alias(CHAMPION, v2)
            deadline = time.monotonic() + 20
            while not any(r[1] == v2.version for rs in results for r in rs[-3:]):
                assert time.monotonic() < deadline, "responses never switched to v2"
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()

    answered = [r for rs in results for r in rs]
    failed = [r for r in answered if r[0] != 200]
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[:3]}"
    assert len(answered) >= 40, "the clients must actually have loaded the server"
    for rs in results:
        versions = [r[1] for r in rs]
        assert set(versions) <= {v1.version, v2.version}
        if v2.version in versions:
            # Each client is sequential: once it saw v2, it never sees v1 again.
            assert v1.version not in versions[versions.index(v2.version) :]
    assert sum(r[1] == v2.version for r in answered) >= 8
    logged = read_predictions(tmp_path).set_index("request_id")["model_version"]
    for _status, version, ids in answered:
        for rid in ids:
            assert logged.get(rid) == version, f"{rid} answered by v{version} is not logged as such"


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(tracking_uri, v1_model, v2_model, tmp_path):
    # An experiment of its own, so its artifacts can be removed without touching other tests'.
    registry = Registry(tracking_uri, "serving-broken", experiment="broken", artifact_root=tmp_path / "art")
    v1 = publish(registry, v1_model)
    with (
        serve_in_thread(create_app(CFG, registry, tmp_path / "logs")) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        v2 = registry.register_model(v2_model, input_example=TEXTS[:2])
        shutil.rmtree(tmp_path / "art")  # v2 can no longer be loaded; v1 is already in memory
        before = sample(metric_samples(client), "driftloop_errors_total", kind="reload")
        registry.set_alias(CHAMPION, v2)
        deadline = time.monotonic() + 20
        while sample(metric_samples(client), "driftloop_errors_total", kind="reload") == before:
            assert time.monotonic() < deadline, "the failed load was never counted"
            assert predict(client, {"text": TEXTS[0]}).status_code == 200
            time.sleep(0.1)
        answer = predict(client, {"text": TEXTS[0]})
        assert answer.status_code == 200 and answer.json()["model_version"] == v1.version
        assert client.get("/ready").json()["model_version"] == v1.version


def test_every_answered_request_survives_a_sigkill(registry_for, v1_model, tracking_uri, tmp_path):
    publish(registry_for("serving-crash"), v1_model)
    answered: list[str] = []
    stop = threading.Event()

    def client_loop(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.post("/predict", json={"texts": TEXTS[:3]})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    answered.extend(a["request_id"] for a in r.json()["predictions"])

    with serve_in_subprocess(tracking_uri, "serving-crash", tmp_path, reload_interval_s=5.0) as (url, proc):
        threads = [threading.Thread(target=client_loop, args=(url,)) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(answered) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # while the clients are still sending
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(answered) >= 300
    logged = read_predictions(tmp_path)
    missing = set(answered) - set(logged["request_id"])
    assert not missing, f"{len(missing)} answered requests are not in the log"
    assert logged.attrs[SKIPPED_LINES] == 0
