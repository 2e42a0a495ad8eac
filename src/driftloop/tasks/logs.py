"""Log tasks: compact closed JSON Lines parts to Parquet, find what versioned sets hold, retire old rows."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from driftloop.adapters import logstore
from driftloop.adapters.logstore import LogRoot
from driftloop.adapters.registry import Registry
from driftloop.adapters.versioning import DatasetStore
from driftloop.config.settings import LogSettings
from driftloop.tasks import SERVER_RETRIES

# The lineage tags that name a DVC-versioned set a model version was trained or monitored on.
VERSIONED_SET_TAGS = ("data.md5", "reference.md5")


@task(cache_policy=NO_CACHE)
def compact(log_root: LogRoot, cfg: LogSettings) -> list[logstore.CompactionResult]:
    """Compact the closed JSONL parts of both logs into one Parquet file per partition."""
    results = logstore.compact(log_root, closed_after_s=cfg.closed_after_s)
    for r in results:
        get_run_logger().info("%s/%s: %d parts -> %s (%d rows)", r.kind, r.partition, r.parts, r.file, r.rows)
    return results


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def versioned_set_md5s(registry: Registry) -> list[str]:
    """The md5 of every training and reference set a registered model version names."""
    return sorted({v["tags"][t] for v in registry.versions() for t in VERSIONED_SET_TAGS if v["tags"].get(t)})


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def versioned_texts(datasets: DatasetStore, md5s: list[str], scratch: Path) -> list[str]:
    """The texts those sets hold, each restored through DVC (a set that cannot be restored fails
    the task, so retention deletes nothing it cannot vouch for)."""
    return datasets.texts(md5s, scratch)


@task(cache_policy=NO_CACHE)
def apply_retention(log_root: LogRoot, cfg: LogSettings, keep_texts: list[str]) -> list[logstore.RetentionResult]:
    """Delete rows older than ``cfg.retention_days``, except predictions of ``keep_texts`` and their labels."""
    results = logstore.apply_retention(log_root, retention_days=cfg.retention_days, keep_texts=keep_texts)
    for r in results:
        get_run_logger().info("%s/%s: kept %d of %d rows", r.kind, r.partition, r.rows_kept, r.rows_before)
    return results


@task(cache_policy=NO_CACHE)
def publish_summary(
    compacted: list[logstore.CompactionResult], retired: list[logstore.RetentionResult], retention_days: int
) -> str:
    """The run's work as a markdown artifact; returns its text."""
    rows = "\n".join(f"| {r.kind} | {r.partition} | {r.parts} | {r.rows} | {r.skipped} |" for r in compacted)
    kept = "\n".join(f"| {r.kind} | {r.partition} | {r.rows_before} | {r.rows_kept} |" for r in retired)
    text = (
        f"## Log compaction\n\n{len(compacted)} partitions compacted\n\n"
        "| log | partition | parts | rows | torn lines |\n|---|---|---|---|---|\n"
        f"{rows}\n\n## Retention ({retention_days} days)\n\n{len(retired)} partitions trimmed\n\n"
        "| log | partition | rows before | rows kept |\n|---|---|---|---|\n"
        f"{kept}\n"
    )
    create_markdown_artifact(text, key="log-compaction", description="log compaction and retention")
    return text
