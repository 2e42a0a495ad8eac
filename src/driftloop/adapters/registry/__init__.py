"""The MLflow adapter: tracking runs, the model registry and its aliases.

This is the only module that imports mlflow. Aliases (``champion``, ``challenger``) decide which
version serves; stages are deprecated and never used.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import joblib
import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from driftloop.core.errors import RunFailed
from driftloop.core.types import ModelRef, RolloutState, Routing
from driftloop.models.families import TextClassifier

CHAMPION = "champion"
CHALLENGER = "challenger"
# The registered model's tag holding the desired traffic split (a RolloutState as JSON): kept
# with the aliases, so every replica reads both in one call and converges to the same routing.
ROLLOUT_TAG = "driftloop.rollout"

# mlflow keeps the tracking URI in a process global; calls that rely on it (start_run,
# log_model, load_model) are serialised so two registries in one process cannot cross.
_GLOBAL_URI_LOCK = threading.RLock()
_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _requirements(model: TextClassifier | None = None) -> list[str]:
    """Exact pins of what the pyfunc needs: MLflow's inference would drag in every import it saw
    (pytest included). A family that needs more says so in ``pip_packages`` (the transformer
    family: torch, transformers, tokenizers, safetensors)."""
    from importlib.metadata import version

    pkgs = ["scikit-learn", "numpy", "scipy", "pandas", "joblib", "mlflow-skinny"]
    pkgs += [p for p in getattr(model, "pip_packages", ()) if p not in pkgs]
    out = []
    for pkg in pkgs:
        try:
            # A local version label (torch's "+cpu") names a wheel index, not a release: pin the release.
            out.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except Exception:  # noqa: BLE001  pragma: no cover - a package absent here is simply not pinned
            out.append(pkg)
    return out


class IntentPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of any :class:`TextClassifier`: a frame with ``text`` in, intent and
    confidence out. In-process callers use :attr:`classifier` directly and skip the frame."""

    classifier: TextClassifier | None = None
    # MLflow validates predict's type hints; a frame with a text column in, intent and
    # confidence out is declared by the explicit signature at logging time instead.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.classifier = joblib.load(context.artifacts["classifier"])

    def predict(self, context, model_input, params=None):
        if isinstance(model_input, pd.DataFrame):
            texts = model_input["text"].astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        preds = self.classifier.predict(texts)
        return pd.DataFrame({"intent": [p.intent for p in preds], "confidence": [p.confidence for p in preds]})


class RegistryError(RunFailed, RuntimeError):
    pass


class Registry:
    """One registered model name in one MLflow tracking store."""

    def __init__(
        self, tracking_uri: str, model_name: str, experiment: str = "driftloop", artifact_root: Path | None = None
    ):
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.experiment = experiment
        # Against a tracking server MLflow prints "View run … at" for every run to stdout; the
        # runs are linked from Prefect's artifacts and the CLI's output already.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.artifact_root = Path(artifact_root) if artifact_root else None
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._experiment_id: str | None = None

    # -- tracking ---------------------------------------------------------------------------
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                location = self.artifact_root.resolve().as_uri() if self.artifact_root else None
                try:
                    self._experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
                except MlflowException:
                    # another process created it between our read and our create
                    self._experiment_id = self.client.get_experiment_by_name(self.experiment).experiment_id
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    @contextmanager
    def _uri(self) -> Iterator[None]:
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
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags or {})
        run_id = run.info.run_id
        try:
            for key, value in (params or {}).items():
                self.client.log_param(run_id, key, _param(value))
            for key, value in (metrics or {}).items():
                self.client.log_metric(run_id, key, float(value))
            for artifact_path, path in (artifacts or {}).items():
                if Path(path).is_dir():
                    self.client.log_artifacts(run_id, str(path), artifact_path=artifact_path or None)
                else:
                    self.client.log_artifact(run_id, str(path), artifact_path=artifact_path or None)
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def artifact_uri(self, run_id: str, path: str = "") -> str:
        base = self.client.get_run(run_id).info.artifact_uri
        return f"{base}/{path}" if path else base

    def run_url(self, run_id: str, ui_base: str) -> str:
        return f"{ui_base.rstrip('/')}/#/experiments/{self.experiment_id()}/runs/{run_id}"

    @staticmethod
    def version_url(ref: ModelRef, ui_base: str) -> str:
        return f"{ui_base.rstrip('/')}/#/models/{ref.name}/versions/{ref.version}"

    # -- registry ---------------------------------------------------------------------------
    def register_model(
        self,
        model: TextClassifier,
        *,
        tags: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        params: dict[str, Any] | None = None,
        run_name: str = "train",
        input_example: Sequence[str] | None = None,
        artifacts: dict[str, Path] | None = None,
    ) -> ModelRef:
        """Log the model in one run and create its version with all lineage tags at once.

        The version is created last, in a single call carrying its tags: if anything before it
        fails, nothing is registered, so there is never a half-built version.
        """
        tags = {k: str(v) for k, v in (tags or {}).items()}
        example = list(input_example or ["where is my card?"])[:3]
        frame = pd.DataFrame({"text": example})
        preds = model.predict(example)
        signature = infer_signature(
            frame, pd.DataFrame({"intent": [p.intent for p in preds], "confidence": [p.confidence for p in preds]})
        )
        with self._uri(), tempfile.TemporaryDirectory() as tmp:
            classifier_path = Path(tmp) / "classifier.joblib"
            joblib.dump(model, classifier_path)
            with mlflow.start_run(experiment_id=self.experiment_id(), run_name=run_name, tags=tags) as run:
                if params:
                    mlflow.log_params({k: _param(v) for k, v in params.items()})
                if metrics:
                    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
                for artifact_path, path in (artifacts or {}).items():
                    if Path(path).is_dir():
                        mlflow.log_artifacts(str(path), artifact_path=artifact_path or None)
                    else:
                        mlflow.log_artifact(str(path), artifact_path=artifact_path or None)
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=IntentPyfunc(),
                    artifacts={"classifier": str(classifier_path)},
                    signature=signature,
                    input_example=frame,
                    pip_requirements=_requirements(model),
                )
            run_id = run.info.run_id
            try:
                self.client.get_registered_model(self.model_name)
            except MlflowException:
                with suppress(MlflowException):  # created concurrently
                    self.client.create_registered_model(self.model_name)
            version_tags = dict(tags)
            version_tags.update({f"metric.{k}": f"{v:.6f}" for k, v in (metrics or {}).items()})
            # Inside _uri(): MLflow resolves a models:/m-... source through the global tracking
            # URI, not this client's.
            version = self.client.create_model_version(
                self.model_name,
                source=info.model_uri,
                run_id=run_id,
                tags=version_tags,
                model_id=info.model_id,  # a tracking server needs it to resolve the models:/ source
            )
        return ModelRef(self.model_name, str(version.version))

    def alias(self, name: str) -> ModelRef | None:
        """The version ``name`` points at; None when the model or the alias does not exist.
        Any other failure (the store is unreachable, say) raises: an outage is not "no model"."""
        try:
            mv = self.client.get_model_version_by_alias(self.model_name, name)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and "not found" in str(exc):
                return None
            raise
        return ModelRef(self.model_name, str(mv.version))

    def champion(self) -> ModelRef | None:
        return self.alias(CHAMPION)

    def challenger(self) -> ModelRef | None:
        return self.alias(CHALLENGER)

    def routing(self) -> Routing:
        """The champion and the rollout state in one registry call (what replicas poll)."""
        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return Routing(None)
            raise
        version = (model.aliases or {}).get(CHAMPION)
        champion = ModelRef(self.model_name, str(version)) if version is not None else None
        return Routing(champion, _rollout_state(model.tags or {}))

    def rollout_state(self) -> RolloutState:
        return self.routing().state

    def set_rollout_state(self, state: RolloutState) -> None:
        """Publish the desired traffic split; replicas pick it up on their next poll."""
        self.client.set_registered_model_tag(self.model_name, ROLLOUT_TAG, json.dumps(asdict(state), sort_keys=True))

    def set_alias(self, name: str, ref: ModelRef) -> None:
        self.client.set_registered_model_alias(self.model_name, name, ref.version)

    def delete_alias(self, name: str) -> None:
        with suppress(MlflowException):
            self.client.delete_registered_model_alias(self.model_name, name)

    def version_tags(self, ref: ModelRef) -> dict[str, str]:
        return dict(self.client.get_model_version(ref.name, ref.version).tags)

    def set_version_tag(self, ref: ModelRef, key: str, value: str) -> None:
        self.client.set_model_version_tag(ref.name, ref.version, key, value)

    def versions(self) -> list[dict[str, Any]]:
        """Every version, newest first, with its aliases and tags (for ``driftloop status``)."""
        try:
            found = self.client.search_model_versions(f"name='{self.model_name}'")
            # search results carry no aliases; the registered model has the alias map
            alias_map = self.client.get_registered_model(self.model_name).aliases or {}
        except MlflowException:
            return []
        by_version: dict[str, list[str]] = {}
        for alias, version in alias_map.items():
            by_version.setdefault(str(version), []).append(alias)
        rows = []
        for mv in sorted(found, key=lambda m: int(m.version), reverse=True):
            rows.append(
                {
                    "version": str(mv.version),
                    "aliases": sorted(by_version.get(str(mv.version), [])),
                    "run_id": mv.run_id,
                    "created": mv.creation_timestamp,
                    "tags": dict(mv.tags),
                }
            )
        return rows

    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The newest tracking runs (training and monitoring), for ``driftloop status``."""
        try:
            runs = self.client.search_runs(
                [self.experiment_id()], order_by=["attributes.start_time DESC"], max_results=limit
            )
        except MlflowException:
            return []
        return [
            {
                "run_id": r.info.run_id,
                "name": r.info.run_name,
                "status": r.info.status,
                "start": r.info.start_time,
                "kind": r.data.tags.get("driftloop.kind", ""),
                "flow_run": r.data.tags.get("prefect.flow_run_id", ""),
            }
            for r in runs
        ]

    def load(self, ref: ModelRef) -> TextClassifier:
        with self._uri():
            loaded = mlflow.pyfunc.load_model(f"models:/{ref.name}/{ref.version}")
        wrapper = loaded.unwrap_python_model()
        if not isinstance(wrapper, IntentPyfunc) or wrapper.classifier is None:
            raise RegistryError(f"{ref}: not a driftloop intent model")
        return wrapper.classifier


def _rollout_state(tags: dict[str, str]) -> RolloutState:
    raw = tags.get(ROLLOUT_TAG)
    if not raw:
        return RolloutState()
    try:
        return RolloutState(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        # A hand-edited or foreign tag: refuse loudly rather than route on a guess.
        raise RegistryError(f"registered model tag {ROLLOUT_TAG!r} is not a valid rollout state: {exc}") from None


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
