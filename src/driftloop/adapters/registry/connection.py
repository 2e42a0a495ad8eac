"""One MLflow tracking store as the registry package talks to it: the client, the error policy
(:meth:`Connection.failures`) and the lock around MLflow's process-global tracking URI."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2
from mlflow.tracking import MlflowClient

from driftloop.adapters.registry.names import TRACKING_SERVER
from driftloop.core.errors import DriftloopError, RegistryError, ServerUnreachable, as_unreachable

# mlflow keeps the tracking URI in a process global; calls that rely on it (start_run,
# log_model, load_model) are serialised so two registries in one process cannot cross.
_GLOBAL_URI_LOCK = threading.RLock()
_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")

# MLflow error codes that mean "no such thing": a normal answer for a read.
_NOT_FOUND = {databricks_pb2.ErrorCode.Name(databricks_pb2.RESOURCE_DOES_NOT_EXIST)}
# ... and the one a missing alias of an existing model comes back with.
_BAD_PARAMETER = databricks_pb2.ErrorCode.Name(databricks_pb2.INVALID_PARAMETER_VALUE)
_ALREADY_EXISTS = databricks_pb2.ErrorCode.Name(databricks_pb2.RESOURCE_ALREADY_EXISTS)


def is_not_found(exc: MlflowException) -> bool:
    """Whether MLflow's error says the model, version, alias, run or experiment does not exist."""
    if exc.error_code in _NOT_FOUND:
        return True
    return exc.error_code == _BAD_PARAMETER and "not found" in str(exc)


def already_exists(exc: MlflowException) -> bool:
    """Whether MLflow's error says a create lost a race with another creator."""
    return exc.error_code == _ALREADY_EXISTS


def _is_transient(exc: MlflowException) -> bool:
    # A server-side failure (5xx: an internal error, a locked SQLite store, a server going down)
    # or a rate limit (429): the same call may succeed a moment later.
    status = exc.get_http_status_code()
    return status >= 500 or status == 429


class Connection:
    """The MLflow client for one tracking URI and one registered model name."""

    def __init__(self, tracking_uri: str, model_name: str, experiment: str, artifact_root: Path | None):
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.experiment = experiment
        self.artifact_root = Path(artifact_root) if artifact_root else None
        # Against a tracking server MLflow prints "View run … at" for every run to stdout; the
        # runs are linked from Prefect's artifacts and the CLI's output already.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def error(self, action: str, exc: BaseException) -> DriftloopError | None:
        """The policy's error for ``exc`` raised while doing ``action``: ServerUnreachable for a
        failed connection, RegistryError for any other MLflow error; None for anything else (a
        bug or a local failure, which propagates as it is)."""
        unreachable = as_unreachable(exc, {TRACKING_SERVER: self.tracking_uri})
        if unreachable is not None:
            return ServerUnreachable(str(unreachable), url=self.tracking_uri)
        if isinstance(exc, MlflowException):
            return RegistryError(
                f"MLflow at {self.tracking_uri}: {action} failed: {exc.message}",
                url=self.tracking_uri,
                transient=_is_transient(exc),
            )
        return None

    @contextmanager
    def failures(self, action: str) -> Iterator[None]:
        """Raise what MLflow raises inside as the policy's errors (see the package docstring).

        Reads that answer "not found" with None catch :class:`MlflowException` themselves, with
        :func:`is_not_found`, before this translation, and pass every other error to :meth:`error`.
        """
        try:
            yield
        except DriftloopError:
            raise
        except Exception as exc:
            translated = self.error(action, exc)
            if translated is None:
                raise
            raise translated from exc

    @contextmanager
    def global_uri(self) -> Iterator[None]:
        """Point MLflow's process-global tracking and registry URIs at this store for the block."""
        with _GLOBAL_URI_LOCK:
            # set_tracking_uri also writes MLFLOW_*_URI into os.environ (for subprocesses);
            # restore both the globals and the environment exactly as they were.
            saved_env = {k: os.environ.get(k) for k in _URI_ENV}
            previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            try:
                yield
            finally:
                mlflow.set_tracking_uri(previous[0])
                mlflow.set_registry_uri(previous[1])
                for key, value in saved_env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
