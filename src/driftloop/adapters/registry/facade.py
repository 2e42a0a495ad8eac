"""The :class:`Registry` facade: one registered model name in one MLflow tracking store, over the
tracking, store, aliases and listing modules (the error policy is the package's)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from driftloop.adapters.registry.aliases import Aliases
from driftloop.adapters.registry.connection import Connection
from driftloop.adapters.registry.listing import Listing
from driftloop.adapters.registry.store import ModelStore
from driftloop.adapters.registry.tracking import Tracking
from driftloop.adapters.registry.trust import ModelTrust
from driftloop.core.types import ModelRef, MonitorStatus, RolloutState, Routing
from driftloop.models.families import TextClassifier


class Registry:
    """One registered model name in one MLflow tracking store: the facade over :attr:`tracking`,
    :attr:`store`, :attr:`aliases` and :attr:`listing`."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        experiment: str = "driftloop",
        artifact_root: Path | None = None,
        trust: ModelTrust | None = None,
    ):
        self.conn = Connection(tracking_uri, model_name, experiment, artifact_root)
        self.tracking = Tracking(self.conn)
        # Who may sign versions and whose signatures load (default: the environment's keys).
        self.trust = trust if trust is not None else ModelTrust.from_environment()
        self.store = ModelStore(self.conn, self.tracking, self.trust)
        self.aliases = Aliases(self.conn)
        self.listing = Listing(self.conn, self.tracking)

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking (and registry) URI."""
        return self.conn.tracking_uri

    @property
    def model_name(self) -> str:
        """The registered model's name."""
        return self.conn.model_name

    @property
    def experiment(self) -> str:
        """The experiment the runs go to."""
        return self.conn.experiment

    @property
    def client(self) -> Any:
        """The underlying ``MlflowClient``, for tests and one-off inspection."""
        return self.conn.client

    # -- tracking ---------------------------------------------------------------------------
    def experiment_id(self) -> str:
        """The experiment's id (created on first use)."""
        return self.tracking.experiment_id()

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
        return self.tracking.log_run(run_name, params=params, metrics=metrics, tags=tags, artifacts=artifacts)

    def artifact_uri(self, run_id: str, path: str = "") -> str:
        """Where run ``run_id`` keeps its artifacts (``path`` below them, when given)."""
        return self.tracking.artifact_uri(run_id, path)

    def run_url(self, run_id: str, ui_base: str) -> str:
        """Run ``run_id`` in the MLflow UI at ``ui_base``."""
        return self.tracking.run_url(run_id, ui_base)

    # -- model store ------------------------------------------------------------------------
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
        """Log ``model`` in one run and create its version with all its tags (see
        :meth:`ModelStore.register_model`)."""
        return self.store.register_model(
            model,
            tags=tags,
            metrics=metrics,
            params=params,
            run_name=run_name,
            input_example=input_example,
            artifacts=artifacts,
        )

    def load(self, ref: ModelRef) -> TextClassifier:
        """The classifier registered as ``ref``."""
        return self.store.load(ref)

    def version_tags(self, ref: ModelRef) -> dict[str, str]:
        """The tags of version ``ref`` (empty when there is no such version)."""
        return self.store.version_tags(ref)

    def created_at(self, ref: ModelRef) -> datetime | None:
        """When version ``ref`` was registered (UTC; None when there is no such version)."""
        return self.store.created_at(ref)

    def set_version_tag(self, ref: ModelRef, key: str, value: str) -> None:
        """Set tag ``key`` of version ``ref``."""
        self.store.set_version_tag(ref, key, value)

    @staticmethod
    def version_url(ref: ModelRef, ui_base: str) -> str:
        """Version ``ref`` in the MLflow UI at ``ui_base``."""
        return ModelStore.version_url(ref, ui_base)

    # -- aliases and routing ----------------------------------------------------------------
    def alias(self, name: str) -> ModelRef | None:
        """The version alias ``name`` points at; None when the model or the alias does not exist."""
        return self.aliases.alias(name)

    def champion(self) -> ModelRef | None:
        """The version the ``champion`` alias points at, if any."""
        return self.aliases.champion()

    def challenger(self) -> ModelRef | None:
        """The version the ``challenger`` alias points at, if any."""
        return self.aliases.challenger()

    def set_alias(self, name: str, ref: ModelRef) -> None:
        """Point alias ``name`` at version ``ref``."""
        self.aliases.set_alias(name, ref)

    def delete_alias(self, name: str) -> None:
        """Remove alias ``name`` (nothing to do when it does not exist)."""
        self.aliases.delete_alias(name)

    def routing(self) -> Routing:
        """The champion and the rollout state in one registry call (what replicas poll)."""
        return self.aliases.routing()

    def rollout_state(self) -> RolloutState:
        """The desired traffic split."""
        return self.aliases.rollout_state()

    def set_monitor_status(self, status: MonitorStatus) -> None:
        """Publish the monitoring verdict; replicas export it on their next poll."""
        self.aliases.set_monitor_status(status)

    def set_rollout_state(self, state: RolloutState) -> None:
        """Publish the desired traffic split; replicas pick it up on their next poll."""
        self.aliases.set_rollout_state(state)

    def acting_user(self) -> str | None:
        """The MLflow user this process authenticates as (``MLFLOW_TRACKING_USERNAME`` against a
        tracking server); None on a local store or without credentials."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        return os.environ.get("MLFLOW_TRACKING_USERNAME") or None

    def claim_manual_move(self, record: dict[str, object]) -> None:
        """Record who is about to move an alias by hand; refused (MoveRefused) without EDIT."""
        self.aliases.claim_manual_move(record)

    def has_version(self, version: str) -> bool:
        """Whether version ``version`` of this model is registered."""
        return self.store.created_at(ModelRef(self.model_name, version)) is not None

    # -- listings ---------------------------------------------------------------------------
    def versions(self) -> list[dict[str, Any]]:
        """Every version, newest first, with its aliases and tags (for ``driftloop status``)."""
        return self.listing.versions()

    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The newest tracking runs (training and monitoring), for ``driftloop status``."""
        return self.listing.recent_runs(limit)
