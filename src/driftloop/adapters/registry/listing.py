"""What ``driftloop status`` lists: every version with its aliases and tags, and the newest runs."""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException

from driftloop.adapters.registry.connection import Connection, is_not_found
from driftloop.adapters.registry.tracking import Tracking


class Listing:
    """Read-only listings of one registered model and its experiment."""

    def __init__(self, conn: Connection, tracking: Tracking):
        self.conn = conn
        self.tracking = tracking

    def versions(self) -> list[dict[str, Any]]:
        """Every version, newest first, with its aliases and tags; empty when the model does not
        exist yet."""
        conn = self.conn
        with conn.failures(f"listing the versions of {conn.model_name!r}"):
            found = conn.client.search_model_versions(f"name='{conn.model_name}'")
            if not found:
                return []
            try:
                # search results carry no aliases; the registered model has the alias map
                alias_map = conn.client.get_registered_model(conn.model_name).aliases or {}
            except MlflowException as exc:
                if not is_not_found(exc):  # deleted since the search
                    raise
                return []
        by_version: dict[str, list[str]] = {}
        for alias, version in alias_map.items():
            by_version.setdefault(str(version), []).append(alias)
        return [
            {
                "version": str(mv.version),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "run_id": mv.run_id,
                "created": mv.creation_timestamp,
                "tags": dict(mv.tags),
            }
            for mv in sorted(found, key=lambda m: int(m.version), reverse=True)
        ]

    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The newest tracking runs (training, monitoring, rollouts), newest first."""
        with self.conn.failures(f"listing the runs of experiment {self.conn.experiment!r}"):
            runs = self.conn.client.search_runs(
                [self.tracking.experiment_id()], order_by=["attributes.start_time DESC"], max_results=limit
            )
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
