"""The project's error categories, and telling an unreachable server from any other failure."""

from __future__ import annotations

import socket

import pytest

from driftloop.adapters.registry import RegistryError
from driftloop.core import errors
from driftloop.data.dataset import DataError
from driftloop.data.validation import ValidationError
from driftloop.ops.prefect_server import PrefectServerError
from driftloop.ops.stack import StackError
from driftloop.serving.auth import MissingApiToken


@pytest.mark.parametrize(
    ("cls", "base", "code"),
    [
        (DataError, ValueError, errors.EXIT_INPUT),
        (ValidationError, ValueError, errors.EXIT_INPUT),
        (MissingApiToken, RuntimeError, errors.EXIT_INPUT),
        (RegistryError, RuntimeError, errors.EXIT_RUN_FAILED),
        (StackError, RuntimeError, errors.EXIT_RUN_FAILED),
        (PrefectServerError, RuntimeError, errors.EXIT_UNREACHABLE),
    ],
)
def test_project_errors_keep_their_builtin_base_and_have_a_category(cls, base, code):
    assert issubclass(cls, errors.DriftloopError) and issubclass(cls, base)
    assert cls.exit_code == code
    assert len({errors.EXIT_OK, errors.EXIT_RUN_FAILED, errors.EXIT_INPUT, errors.EXIT_UNREACHABLE}) == 4


class ClientError(Exception):
    """A client library's wrapper, as MLflow's MlflowException wraps requests' errors."""


def raised(inner: BaseException, message: str) -> BaseException:
    """``ClientError(message)`` raised while handling ``inner`` (implicit chaining, as clients do)."""
    try:
        try:
            raise inner
        except BaseException:  # noqa: BLE001  any error, chained as a client library does
            raise ClientError(message)  # noqa: B904  implicit chaining (__context__) is what is tested
    except ClientError as exc:
        return exc


MLFLOW = "http://127.0.0.1:5999"
SERVERS = {
    "the MLflow tracking server (registry.tracking_uri)": MLFLOW,
    "the Prefect API (prefect.api_url / PREFECT_API_URL)": "http://127.0.0.1:4200/api",
    "the S3 server (storage.s3_endpoint_url)": None,
}


@pytest.mark.parametrize(
    ("inner", "url", "expected"),
    [
        (
            ConnectionRefusedError(111, "Connection refused"),
            f"{MLFLOW}/api/2.0/mlflow/runs/get",
            f"cannot reach the MLflow tracking server (registry.tracking_uri) at {MLFLOW}: connection refused",
        ),
        (
            socket.gaierror(-2, "Name or service not known"),
            "http://127.0.0.1:4200/api/flow_runs/",
            "cannot reach the Prefect API (prefect.api_url / PREFECT_API_URL) at http://127.0.0.1:4200/api: "
            "unknown host",
        ),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            "http://10.0.0.9:9000/bucket",
            "cannot reach http://10.0.0.9:9000/bucket: connection reset by peer",
        ),
    ],
)
def test_a_failed_connection_names_the_server(inner, url, expected):
    found = errors.as_unreachable(raised(inner, f"API request to {url} failed"), SERVERS)
    assert isinstance(found, errors.ServerUnreachable) and found.exit_code == errors.EXIT_UNREACHABLE
    assert str(found) == expected


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError("only 3 new labelled rows after 600s (need 50)"),  # a wait that ran out, no server
        raised(KeyError("text"), f"API request to {MLFLOW}/api failed"),
        DataError("x.csv: file not found"),
    ],
)
def test_other_failures_are_not_called_unreachable(exc):
    assert errors.as_unreachable(exc, SERVERS) is None


def test_a_project_error_that_is_unreachable_is_kept_as_it_is():
    exc = PrefectServerError(
        "the local Prefect server on 127.0.0.1:4200 exited with 1", url="http://127.0.0.1:4200/api"
    )
    assert errors.as_unreachable(exc, SERVERS) is exc
