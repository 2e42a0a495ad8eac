"""Tracking runs: the experiment, finished runs with their params, metrics and artifacts, and
links to them in the MLflow UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from driftloop.adapters.registry.connection import Connection, already_exists

# MLflow refuses a param value longer than this.
MAX_PARAM_CHARS = 6000


def param_value(value: Any) -> str:
    """``value`` as an MLflow param: its text, cut to what MLflow accepts."""
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


class Tracking:
    """The runs of one experiment in one tracking store."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self._experiment_id: str | None = None

    def experiment_id(self) -> str:
        """The experiment's id, creating the experiment (under the artifact root) on first use."""
        if self._experiment_id is None:
            conn = self.conn
            with conn.failures(f"reading experiment {conn.experiment!r}"):
                exp = conn.client.get_experiment_by_name(conn.experiment)
                if exp is not None:
                    self._experiment_id = exp.experiment_id
                else:
                    self._experiment_id = self._create_experiment()
        return self._experiment_id

    def _create_experiment(self) -> str:
        conn = self.conn
        location = conn.artifact_root.resolve().as_uri() if conn.artifact_root else None
        try:
            return conn.client.create_experiment(conn.experiment, artifact_location=location)
        except MlflowException as exc:
            if not already_exists(exc):
                raise
        # another process created it between our read and our create
        exp = conn.client.get_experiment_by_name(conn.experiment)
        if exp is None:  # pragma: no cover - created, then deleted at once by someone else
            raise MlflowException(f"experiment {conn.experiment!r} vanished while being created")
        return exp.experiment_id

    def log_run(
        self,
        run_name: str,
        *,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        artifacts: dict[str, Path] | None = None,
    ) -> str:
        """One finished MLflow run (e.g. a monitor run with its report); returns the run id."""
        client = self.conn.client
        with self.conn.failures(f"logging run {run_name!r}"):
            run = client.create_run(self.experiment_id(), run_name=run_name, tags=tags or {})
            run_id = run.info.run_id
            try:
                for key, value in (params or {}).items():
                    client.log_param(run_id, key, param_value(value))
                for key, value in (metrics or {}).items():
                    client.log_metric(run_id, key, float(value))
                for artifact_path, path in (artifacts or {}).items():
                    if Path(path).is_dir():
                        client.log_artifacts(run_id, str(path), artifact_path=artifact_path or None)
                    else:
                        client.log_artifact(run_id, str(path), artifact_path=artifact_path or None)
            except Exception:
                # Marked failed, then the error goes on (translated by failures()).
                client.set_terminated(run_id, "FAILED")
                raise
            client.set_terminated(run_id, "FINISHED")
        return run_id

    def artifact_uri(self, run_id: str, path: str = "") -> str:
        """Where run ``run_id`` keeps its artifacts (``path`` below them, when given)."""
        with self.conn.failures(f"reading run {run_id}"):
            base = self.conn.client.get_run(run_id).info.artifact_uri
        return f"{base}/{path}" if path else base

    def run_url(self, run_id: str, ui_base: str) -> str:
        """Run ``run_id`` in the MLflow UI at ``ui_base``."""
        return f"{ui_base.rstrip('/')}/#/experiments/{self.experiment_id()}/runs/{run_id}"
