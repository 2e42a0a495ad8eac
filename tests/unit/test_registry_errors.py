"""The registry's one error policy, against a real MLflow: "not found" is an answer, a server
that does not answer raises ServerUnreachable, any other MLflow error raises RegistryError; each
names the tracking URL. And the retry policy's view of those errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from driftloop.adapters.registry import CHAMPION, ROLLOUT_TAG, Registry
from driftloop.core.errors import RegistryError, ServerUnreachable
from driftloop.core.retry import is_retryable
from driftloop.core.types import ModelRef, RolloutState
from tests.support import free_port


@pytest.fixture(autouse=True)
def _no_client_retries(monkeypatch):
    # MLflow's client retries a refused connection or a 5xx for minutes by default.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def registry(store, tmp_path, request) -> Registry:
    return Registry(store, f"errors-{request.node.name}", artifact_root=tmp_path / "art")


def test_missing_model_alias_and_version_are_answers_not_errors(registry):
    assert registry.champion() is None and registry.alias("anything") is None
    assert registry.routing().champion is None and registry.rollout_state() == RolloutState()
    assert registry.versions() == []
    assert registry.version_tags(ModelRef(registry.model_name, "7")) == {}
    registry.delete_alias(CHAMPION)  # no model: nothing to delete, no error


def test_a_missing_alias_of_an_existing_model_is_none(registry):
    registry.client.create_registered_model(registry.model_name)
    assert registry.challenger() is None
    registry.delete_alias("challenger")
    assert registry.versions() == []


def test_a_write_to_what_does_not_exist_raises_naming_the_store(registry, store):
    registry.client.create_registered_model(registry.model_name)
    with pytest.raises(RegistryError) as caught:
        registry.set_alias(CHAMPION, ModelRef(registry.model_name, "3"))
    assert store in str(caught.value) and caught.value.url == store and not caught.value.transient
    with pytest.raises(RegistryError, match="loading"):
        registry.load(ModelRef(registry.model_name, "3"))


def test_a_foreign_rollout_tag_is_refused(registry):
    registry.client.create_registered_model(registry.model_name, tags={ROLLOUT_TAG: "{not json"})
    with pytest.raises(RegistryError, match=ROLLOUT_TAG):
        registry.routing()


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens there


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.champion(),
        lambda r: r.routing(),
        lambda r: r.versions(),
        lambda r: r.recent_runs(),
        lambda r: r.delete_alias(CHAMPION),
        lambda r: r.version_tags(ModelRef(r.model_name, "1")),
        lambda r: r.log_run("x"),
    ],
    ids=["champion", "routing", "versions", "recent_runs", "delete_alias", "version_tags", "log_run"],
)
def test_a_closed_port_raises_server_unreachable_naming_the_url(call):
    url = _closed_port_url()
    with pytest.raises(ServerUnreachable) as caught:
        call(Registry(url, "unreachable"))
    assert str(caught.value) == f"cannot reach the MLflow tracking server (registry.tracking_uri) at {url}: " + (
        "connection refused"
    )
    assert caught.value.url == url and caught.value.exit_code == 3
    assert is_retryable(caught.value)


@pytest.fixture
def failing_server() -> Iterator[tuple[str, list[int]]]:
    """An HTTP server that answers every request with the next status of its list (JSON body)."""
    statuses: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            status = statuses[0] if statuses else 500
            body = json.dumps({"error_code": "X", "message": f"status {status}"}).encode()
            if status == 403:
                body = json.dumps({"error_code": "PERMISSION_DENIED", "message": "no access"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = do_PATCH = _answer  # noqa: N815

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", statuses
    finally:
        server.shutdown()
        server.server_close()


def test_refused_credentials_raise_a_final_registry_error(failing_server):
    url, statuses = failing_server
    statuses.append(403)
    with pytest.raises(RegistryError) as caught:
        Registry(url, "forbidden").champion()
    assert url in str(caught.value) and caught.value.url == url
    assert not caught.value.transient and not is_retryable(caught.value)


def test_a_server_error_raises_a_transient_registry_error(failing_server):
    url, statuses = failing_server
    statuses.append(503)
    with pytest.raises(RegistryError) as caught:
        Registry(url, "failing").versions()
    assert url in str(caught.value) and caught.value.transient and is_retryable(caught.value)
