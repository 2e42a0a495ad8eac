"""The model store: a classifier saved as plain files (:mod:`driftloop.models.persist`), signed,
logged as an MLflow pyfunc from code, registered as a version with its lineage tags, loaded back
once its signature checks out, and the version's tags read and written."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from driftloop.adapters.registry.connection import Connection, already_exists, is_not_found
from driftloop.adapters.registry.names import FORMAT_TAG, MANIFEST_TAG, MODEL_ARTIFACT, SIGNATURE_TAG
from driftloop.adapters.registry.tracking import Tracking, param_value
from driftloop.adapters.registry.trust import ModelTrust, manifest_digest, model_artifact_path
from driftloop.core.errors import ModelRefused, RegistryError
from driftloop.core.types import ModelRef
from driftloop.models import persist
from driftloop.models.families import TextClassifier


def requirements(model: TextClassifier | None = None) -> list[str]:
    """Exact pins of what the pyfunc needs: MLflow's inference would drag in every import it saw
    (pytest included). A family that needs more says so in ``pip_packages`` (the transformer
    family: torch, transformers, tokenizers, safetensors)."""
    pkgs = ["scikit-learn", "numpy", "scipy", "pandas", "mlflow-skinny"]
    pkgs += [p for p in getattr(model, "pip_packages", ()) if p not in pkgs]
    out = []
    for pkg in pkgs:
        try:
            # A local version label (torch's "+cpu") names a wheel index, not a release: pin the release.
            out.append(f"{pkg}=={package_version(pkg).split('+')[0]}")
        except PackageNotFoundError:  # pragma: no cover - a package absent here is simply not pinned
            out.append(pkg)
    return out


# The pyfunc as code (MLflow's models from code): this file is logged, not a pickled object.
PYFUNC_CODE = Path(__file__).with_name("pyfunc_code.py")


def model_files(mlflow_model_dir: Path, url: str | None = None) -> Path:
    """The driftloop model folder inside a downloaded MLflow model (its ``MLmodel`` names it)."""
    try:
        text = (mlflow_model_dir / "MLmodel").read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelRefused(f"{mlflow_model_dir}: no MLmodel ({exc}); not loaded", url=url) from None
    return mlflow_model_dir / model_artifact_path(text, str(mlflow_model_dir), url)


class ModelStore:
    """The versions of one registered model: log, register, load, tag."""

    def __init__(self, conn: Connection, tracking: Tracking, trust: ModelTrust):
        self.conn = conn
        self.tracking = tracking
        self.trust = trust

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
            # Plain files (no pickle) and their manifest, signed before anything is logged: a
            # model this process may not sign is never half-registered.
            model_dir = Path(tmp) / MODEL_ARTIFACT
            manifest = persist.save(model, model_dir)
            signature_tag = self.trust.sign(manifest)
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
                    python_model=str(PYFUNC_CODE),
                    artifacts={MODEL_ARTIFACT: str(model_dir)},
                    signature=signature,
                    input_example=frame,
                    pip_requirements=requirements(model),
                )
            self._ensure_registered_model()
            version_tags = dict(tags)
            version_tags.update({f"metric.{k}": f"{v:.6f}" for k, v in (metrics or {}).items()})
            version_tags.update(
                {SIGNATURE_TAG: signature_tag, MANIFEST_TAG: manifest_digest(manifest), FORMAT_TAG: persist.FORMAT}
            )
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
        """The classifier registered as ``ref``, once its signature and files check out
        (:class:`~driftloop.adapters.registry.trust.ModelTrust`); a missing version raises
        RegistryError, a refused one ModelRefused. The pyfunc's code is never run."""
        with self.conn.failures(f"loading {ref}"), tempfile.TemporaryDirectory() as tmp:
            try:
                tags = dict(self.conn.client.get_model_version(ref.name, ref.version).tags)
            except MlflowException as exc:
                if is_not_found(exc):
                    raise RegistryError(f"loading {ref}: no such model version", url=self.conn.tracking_uri) from None
                raise
            with self.conn.global_uri():
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{ref.name}/{ref.version}", dst_path=tmp
                )
            model_dir = model_files(Path(local), self.conn.tracking_uri)
            return self.trust.load(model_dir, tags.get(SIGNATURE_TAG), str(ref), self.conn.tracking_uri)

    def version_tags(self, ref: ModelRef) -> dict[str, str]:
        """The tags of version ``ref``; empty when there is no such version."""
        with self.conn.failures(f"reading the tags of {ref}"):
            try:
                return dict(self.conn.client.get_model_version(ref.name, ref.version).tags)
            except MlflowException as exc:
                if is_not_found(exc):
                    return {}
                raise

    def created_at(self, ref: ModelRef) -> datetime | None:
        """When version ``ref`` was registered (UTC); None when there is no such version."""
        with self.conn.failures(f"reading {ref}"):
            try:
                created = self.conn.client.get_model_version(ref.name, ref.version).creation_timestamp
            except MlflowException as exc:
                if is_not_found(exc):
                    return None
                raise
        return datetime.fromtimestamp(int(created) / 1000, UTC) if created else None

    def set_version_tag(self, ref: ModelRef, key: str, value: str) -> None:
        """Set tag ``key`` of version ``ref``."""
        with self.conn.failures(f"tagging {ref} with {key!r}"):
            self.conn.client.set_model_version_tag(ref.name, ref.version, key, value)

    @staticmethod
    def version_url(ref: ModelRef, ui_base: str) -> str:
        """Version ``ref`` in the MLflow UI at ``ui_base``."""
        return f"{ui_base.rstrip('/')}/#/models/{ref.name}/versions/{ref.version}"
