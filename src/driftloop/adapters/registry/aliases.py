"""Which versions serve: the ``champion`` and ``challenger`` aliases and the rollout tag (the
desired traffic split), read together as the routing every serving replica polls."""

from __future__ import annotations

import json
from dataclasses import asdict

from mlflow.exceptions import MlflowException

from driftloop.adapters.registry.connection import Connection, is_not_found
from driftloop.adapters.registry.names import (
    CHALLENGER,
    CHAMPION,
    MONITOR_TAG,
    ROLLOUT_TAG,
    parse_monitor_status,
    parse_rollout_state,
)
from driftloop.core.actors import MoveRefused
from driftloop.core.types import ModelRef, MonitorStatus, RolloutState, Routing

# The last manual move's actor, on the registered model (writing it needs EDIT on the model).
MANUAL_MOVE_TAG = "driftloop.manual_move"
_REFUSED_CODES = {"PERMISSION_DENIED", "UNAUTHENTICATED"}

__all__ = ["CHALLENGER", "CHAMPION", "ROLLOUT_TAG", "Aliases", "parse_rollout_state"]


class Aliases:
    """The aliases and the rollout state of one registered model."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def alias(self, name: str) -> ModelRef | None:
        """The version ``name`` points at; None when the model or the alias does not exist."""
        conn = self.conn
        # The registered model's alias map, not get_model_version_by_alias: MLflow's basic-auth
        # app answers 403 (not 404) for an alias of a model that does not exist yet, to a user
        # without the admin role; the model itself reads as a proper 404.
        with conn.failures(f"reading alias {name!r} of {conn.model_name!r}"):
            try:
                model = conn.client.get_registered_model(conn.model_name)
            except MlflowException as exc:
                if is_not_found(exc):
                    return None
                raise
        version = (model.aliases or {}).get(name)
        return ModelRef(conn.model_name, str(version)) if version is not None else None

    def champion(self) -> ModelRef | None:
        """The version the ``champion`` alias points at, if any."""
        return self.alias(CHAMPION)

    def challenger(self) -> ModelRef | None:
        """The version the ``challenger`` alias points at, if any."""
        return self.alias(CHALLENGER)

    def set_alias(self, name: str, ref: ModelRef) -> None:
        """Point alias ``name`` at version ``ref``."""
        conn = self.conn
        with conn.failures(f"setting alias {name!r} of {conn.model_name!r} to {ref}"):
            conn.client.set_registered_model_alias(conn.model_name, name, ref.version)

    def delete_alias(self, name: str) -> None:
        """Remove alias ``name``; nothing to do when the model or the alias does not exist."""
        conn = self.conn
        with conn.failures(f"deleting alias {name!r} of {conn.model_name!r}"):
            try:
                conn.client.delete_registered_model_alias(conn.model_name, name)
            except MlflowException as exc:
                if not is_not_found(exc):
                    raise

    def routing(self) -> Routing:
        """The champion and the rollout state in one registry call (what replicas poll); no
        champion when the model does not exist yet."""
        conn = self.conn
        with conn.failures(f"reading the routing of {conn.model_name!r}"):
            try:
                model = conn.client.get_registered_model(conn.model_name)
            except MlflowException as exc:
                if is_not_found(exc):
                    return Routing(None)
                raise
        version = (model.aliases or {}).get(CHAMPION)
        champion = ModelRef(conn.model_name, str(version)) if version is not None else None
        tags = model.tags or {}
        return Routing(champion, parse_rollout_state(tags, conn.tracking_uri), parse_monitor_status(tags))

    def rollout_state(self) -> RolloutState:
        """The desired traffic split (the default state when none was published)."""
        return self.routing().state

    def set_monitor_status(self, status: MonitorStatus) -> None:
        """Publish the monitoring verdict; replicas export it on their next poll."""
        conn = self.conn
        with conn.failures(f"publishing the monitoring verdict of {conn.model_name!r}"):
            conn.client.set_registered_model_tag(
                conn.model_name, MONITOR_TAG, json.dumps(asdict(status), sort_keys=True)
            )

    def set_rollout_state(self, state: RolloutState) -> None:
        """Publish the desired traffic split; replicas pick it up on their next poll."""
        conn = self.conn
        with conn.failures(f"publishing the rollout state of {conn.model_name!r}"):
            conn.client.set_registered_model_tag(
                conn.model_name, ROLLOUT_TAG, json.dumps(asdict(state), sort_keys=True)
            )

    def claim_manual_move(self, record: dict[str, object]) -> None:
        """Write ``record`` (who is about to move an alias by hand) as a tag of the registered
        model, before the move. The tag needs EDIT on the model, as the move does: an identity
        that lacks it is refused here, with :class:`MoveRefused` naming it, before anything
        moved. Nothing to do when the model does not exist yet."""
        conn = self.conn
        user = record.get("actor")
        with conn.failures(f"recording a manual move of {conn.model_name!r} by {user}"):
            try:
                conn.client.set_registered_model_tag(
                    conn.model_name, MANUAL_MOVE_TAG, json.dumps(record, sort_keys=True)
                )
            except MlflowException as exc:
                if is_not_found(exc):
                    return
                if exc.error_code in _REFUSED_CODES or exc.get_http_status_code() in (401, 403):
                    raise MoveRefused(
                        f"MLflow at {conn.tracking_uri} refused {user!r}: moving an alias of registered model "
                        f"{conn.model_name!r} needs EDIT on it (the stack's `training` identity has it; "
                        f"`serving` does not): {exc.message}"
                    ) from exc
                raise
