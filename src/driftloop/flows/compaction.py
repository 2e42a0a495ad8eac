"""closed JSONL parts → one Parquet file per day and log → rows past retention retired.

Keeps the prediction and feedback logs cheap to read at any age (docs/logs.md): the monitor's
window, the rollout's polls and the retrain's labels read Parquet for closed days and JSON Lines
only for the parts still being written."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from prefect import flow

from driftloop.adapters import logstore, wiring
from driftloop.core.overlays import flow_settings
from driftloop.flows import source_version
from driftloop.tasks import logs


@dataclass(frozen=True)
class CompactionOutcome:
    """What a compaction run did: the partitions it compacted and those retention trimmed."""

    compacted: list[logstore.CompactionResult]
    retired: list[logstore.RetentionResult] = field(default_factory=list)


def _run_name() -> str:
    return f"compaction {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


@flow(name="compaction", version=source_version(__file__), flow_run_name=_run_name, log_prints=True)
def compaction(retention: bool = True, config: list[str] | None = None) -> CompactionOutcome:
    """Compact the logs' closed parts to Parquet, then (with ``retention``) delete rows older than
    ``logs.retention_days`` except those a registered model version's DVC sets hold."""
    settings = flow_settings(config)
    parts = wiring.build(settings)
    compacted = logs.compact(parts.log_root, settings.logs)
    retired: list[logstore.RetentionResult] = []
    if retention:
        md5s = logs.versioned_set_md5s(parts.registry)
        keep = logs.versioned_texts(parts.datasets, md5s, parts.retrain_dir / "retention")
        retired = logs.apply_retention(parts.log_root, settings.logs, keep)
    logs.publish_summary(compacted, retired, settings.logs.retention_days)
    return CompactionOutcome(compacted, retired)
