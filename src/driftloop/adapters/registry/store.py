"""The model store: a classifier logged as an MLflow pyfunc, registered as a version with its
lineage tags, loaded back, and the version's tags read and written."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Any

import joblib
import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc.model import PythonModel

from driftloop.adapters.registry.connection import Connection, already_exists, is_not_found
from driftloop.adapters.registry.tracking import Tracking, param_value
from driftloop.core.errors import RegistryError
from driftloop.core.types import ModelRef
from driftloop.models.families import TextClassifier


def requirements(model: TextClassifier | None = None) -> list[str]:
    """Exact pins of what the pyfunc needs: MLflow's inference would drag in every import it saw
    (pytest included). A family that needs more says so in ``pip_packages`` (the transformer
    family: torch, transformers, tokenizers, safetensors)."""
    pkgs = ["scikit-learn", "numpy", "scipy", "pandas", "joblib", "mlflow-skinny"]
    pkgs += [p for p in getattr(model, "pip_packages", ()) if p not in pkgs]
    out = []
    for pkg in pkgs:
        try:
            # A local version label (torch's "+cpu") names a wheel index, not a release: pin the release.
            out.append(f"{pkg}=={package_version(pkg).split('+')[0]}")
        except PackageNotFoundError:  # pragma: no cover - a package absent here is simply not pinned
            out.append(pkg)
    return out


class IntentPyfunc(PythonModel):
    """The pyfunc face of any :class:`TextClassifier`: a frame with ``text`` in, intent and
    confidence out. In-process callers use :attr:`classifier` directly and skip the frame."""

    classifier: TextClassifier | None = None
    # MLflow validates predict's type hints; a frame with a text column in, intent and
    # confidence out is declared by the explicit signature at logging time instead.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        """Unpickle the classifier logged next to the pyfunc."""
        self.classifier = joblib.load(context.artifacts["classifier"])

    # No type hints on purpose: MLflow would infer a signature from them (the explicit one given
    # at logging time is the contract) and warn that these are not list[...] hints.
    def predict(self, context, model_input, params=None):
        """Intent and confidence for each text of ``model_input`` (a frame with ``text``, or texts)."""
        if self.classifier is None:
            raise RegistryError("the intent pyfunc was used before its classifier was loaded")
        if isinstance(model_input, pd.DataFrame):
            texts = model_input["text"].astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        preds = self.classifier.predict(texts)
        return pd.DataFrame({"intent": [p.intent for p in preds], "confidence": [p.confidence for p in preds]})


# Models registered before the registry became a package pickled the class under this path; new
# ones keep it, so a version loads the same with older and newer code (the package re-exports it).
IntentPyfunc.__module__ = "driftloop.adapters.registry"


class ModelStore:
    """The versions of one registered model: log, register, load, tag."""

    def __init__(self, conn: Connection, tracking: Tracking):
        self.conn = conn
        self.tracking = tracking

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
        conn = self.conn
        with (
            conn.failures(f"registering a version of {conn.model_name!r}"),
            conn.global_uri(),
            tempfile.TemporaryDirectory() as tmp,
        ):
            classifier_path = Path(tmp) / "classifier.joblib"
            joblib.dump(model, classifier_path)
            with mlflow.start_run(experiment_id=self.tracking.experiment_id(), run_name=run_name, tags=tags) as run:
                if params:
                    mlflow.log_params({k: param_value(v) for k, v in params.items()})
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
                    pip_requirements=requirements(model),
                )
            self._ensure_registered_model()
            version_tags = dict(tags)
            version_tags.update({f"metric.{k}": f"{v:.6f}" for k, v in (metrics or {}).items()})
            # Inside global_uri(): MLflow resolves a models:/m-... source through the global
            # tracking URI, not this client's.
            created = conn.client.create_model_version(
                conn.model_name,
                source=info.model_uri,
                run_id=run.info.run_id,
                tags=version_tags,
                model_id=info.model_id,  # a tracking server needs it to resolve the models:/ source
            )
        return ModelRef(conn.model_name, str(created.version))

    def _ensure_registered_model(self) -> None:
        client, name = self.conn.client, self.conn.model_name
        try:
            client.get_registered_model(name)
            return
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if not already_exists(exc):  # created concurrently: fine
                raise

    def load(self, ref: ModelRef) -> TextClassifier:
        """The classifier registered as ``ref``; a missing version raises RegistryError."""
        with self.conn.failures(f"loading {ref}"), self.conn.global_uri():
            loaded = mlflow.pyfunc.load_model(f"models:/{ref.name}/{ref.version}")
        wrapper = loaded.unwrap_python_model()
        if not isinstance(wrapper, IntentPyfunc) or wrapper.classifier is None:
            raise RegistryError(f"{ref}: not a driftloop intent model", url=self.conn.tracking_uri)
        return wrapper.classifier

    def version_tags(self, ref: ModelRef) -> dict[str, str]:
        """The tags of version ``ref``; empty when there is no such version."""
        with self.conn.failures(f"reading the tags of {ref}"):
            try:
                return dict(self.conn.client.get_model_version(ref.name, ref.version).tags)
            except MlflowException as exc:
                if is_not_found(exc):
                    return {}
                raise

    def set_version_tag(self, ref: ModelRef, key: str, value: str) -> None:
        """Set tag ``key`` of version ``ref``."""
        with self.conn.failures(f"tagging {ref} with {key!r}"):
            self.conn.client.set_model_version_tag(ref.name, ref.version, key, value)

    @staticmethod
    def version_url(ref: ModelRef, ui_base: str) -> str:
        """Version ``ref`` in the MLflow UI at ``ui_base``."""
        return f"{ui_base.rstrip('/')}/#/models/{ref.name}/versions/{ref.version}"
