"""The /feedback bearer token: read from the environment variable the settings name, compared in
constant time, required by default; /predict and the probes stay open."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from driftloop.config.settings import ServingSettings
from driftloop.serving.app import create_app
from driftloop.serving.auth import MissingApiToken, read_api_token
from tests.support import API_TOKEN, AUTH
from tests.support.fakes import FakeSource, ref


@pytest.fixture
def client(tmp_path):
    source = FakeSource()
    source.ref = ref("1")
    with TestClient(create_app(ServingSettings(), source, tmp_path)) as c:
        yield c


def label(client, **kwargs):
    rid = client.post("/predict", json={"text": "lost card"}).json()["predictions"][0]["request_id"]
    return client.post("/feedback", json={"request_id": rid, "label": "a"}, **kwargs)


def test_feedback_without_a_token_is_refused_with_a_bearer_challenge(client):
    response = label(client)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="driftloop"'
    assert response.json()["errors"] == [
        {"field": "Authorization", "message": "missing; send 'Authorization: Bearer <token>'"}
    ]


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {API_TOKEN}x",
        "Bearer ",
        f"Basic {API_TOKEN}",
        API_TOKEN,
        f"Bearer {API_TOKEN[:-1]}",
        "Bearer t\xc3\xabst".encode("latin-1"),
    ],
)
def test_feedback_with_a_wrong_token_is_refused(client, header):
    response = label(client, headers={"Authorization": header})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.json()["detail"] == "Authorization: not the expected bearer token"


def test_feedback_with_the_token_is_accepted_and_refusals_are_counted(client):
    assert label(client, headers=AUTH).status_code == 202
    assert label(client, headers={"Authorization": f"bearer {API_TOKEN}"}).status_code == 202  # scheme: any case
    label(client)
    metrics = client.get("/metrics").text
    assert 'driftloop_errors_total{kind="unauthorized"} 1.0' in metrics
    assert "driftloop_feedback_total 2.0" in metrics


def test_predict_and_the_probes_need_no_token(client):
    for method, path, body in (
        ("POST", "/predict", {"text": "lost card"}),
        ("GET", "/health", None),
        ("GET", "/ready", None),
        ("GET", "/metrics", None),
        ("GET", "/routing", None),
    ):
        assert client.request(method, path, json=body).status_code == 200, path


def test_the_token_is_read_from_the_variable_the_settings_name(monkeypatch, tmp_path):
    cfg = ServingSettings(api_token_env="MY_TOKEN")
    monkeypatch.setenv("MY_TOKEN", "  s3cret\n")
    assert read_api_token(cfg) == "s3cret"  # a Secret made from a file ends in a newline
    source = FakeSource()
    source.ref = ref("1")
    with TestClient(create_app(cfg, source, tmp_path)) as c:
        assert label(c, headers=AUTH).status_code == 401
        assert label(c, headers={"Authorization": "Bearer s3cret"}).status_code == 202


@pytest.mark.parametrize("value", [None, "", "   "])
def test_the_app_refuses_to_start_without_a_required_token(monkeypatch, tmp_path, value):
    if value is None:
        monkeypatch.delenv("DRIFTLOOP_API_TOKEN")
    else:
        monkeypatch.setenv("DRIFTLOOP_API_TOKEN", value)
    with pytest.raises(MissingApiToken, match=r"\$DRIFTLOOP_API_TOKEN is unset or empty"):
        create_app(ServingSettings(), FakeSource(), tmp_path)


def test_without_require_token_and_without_a_token_feedback_is_open(monkeypatch, tmp_path):
    monkeypatch.delenv("DRIFTLOOP_API_TOKEN")
    source = FakeSource()
    source.ref = ref("1")
    with TestClient(create_app(ServingSettings(require_token=False), source, tmp_path)) as c:
        assert label(c).status_code == 202


def test_a_set_token_is_enforced_even_when_not_required(tmp_path):
    source = FakeSource()
    source.ref = ref("1")
    with TestClient(create_app(ServingSettings(require_token=False), source, tmp_path)) as c:
        assert label(c).status_code == 401
        assert label(c, headers=AUTH).status_code == 202
