"""Data tasks: prepare splits, validate, version with DVC, gather labelled production rows."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from driftloop.adapters import logstore
from driftloop.adapters.logstore import LogRoot
from driftloop.adapters.versioning import DatasetStore
from driftloop.config.settings import DataSettings, RetrainPolicy
from driftloop.core.errors import RunFailed
from driftloop.core.types import DataVersion, ValidationReport
from driftloop.data import curation, dataset, validation
from driftloop.tasks import SERVER_RETRIES


class LabelWaitTimeout(RunFailed, TimeoutError):
    """Too few new labelled rows arrived in time; the retrain run ends and the champion stays."""


@task(cache_policy=NO_CACHE)
def prepare(cfg: DataSettings, root: Path) -> dataset.PreparedData:
    """The splits of the configured data set, built once per key (settings + raw files' hashes)."""
    prepared = dataset.ensure_prepared(cfg, root)
    get_run_logger().info("data set %s: prepared splits %s (key %s)", prepared.name, prepared.dir, prepared.key)
    return prepared


@task(cache_policy=NO_CACHE)
def validate_training_set(
    frame: pd.DataFrame, *, source: str, known_labels: Iterable[str] | None, eval_texts: Iterable[str]
) -> ValidationReport:
    """Check a training set (texts, labels, overlap with the evaluation set), publish the report,
    and refuse an invalid one."""
    report = validation.validate_training_set(frame, source=source, known_labels=known_labels, eval_texts=eval_texts)
    create_markdown_artifact(
        f"## Validation of `{source}`\n\n```\n{report.summary()}\n```\n",
        key="validation",
        description="validation gate",
    )
    return validation.require_valid(report)


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def commit_dataset(store: DatasetStore, frame: pd.DataFrame, name: str) -> DataVersion:
    """Version ``frame`` with DVC under ``name``; its md5 is the lineage tag."""
    return store.commit(frame, name)


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def restore_dataset(store: DatasetStore, md5: str, dest: Path) -> Path:
    """The data set with DVC md5 ``md5``, restored to ``dest``."""
    return store.restore(md5, dest)


@task(cache_policy=NO_CACHE)
def wait_for_labels(
    log_root: LogRoot,
    previous: pd.DataFrame,
    eval_texts: list[str],
    label_set: list[str],
    min_new: int,
    policy: RetrainPolicy,
    *,
    since: datetime | None = None,
    max_lag: timedelta = logstore.LABEL_MAX_LAG,
) -> tuple[curation.LabelledRows, datetime | None]:
    """Poll the feedback log until ``min_new`` labelled production rows would add to training;
    the rows, and the newest label's time read (``since`` when no label came).

    Reads the labels posted from ``since`` on (the champion's ``data.labels_until``: the earlier
    ones are in its training set; None: every label the log holds), then only the predictions
    they label, at most ``max_lag`` before each; each poll reads only the labels posted since
    the previous one."""
    logger = get_run_logger()
    # A wait for people (annotators) with its own timeout, not a retry of a server call.
    deadline = time.monotonic() + policy.label_wait_timeout_s
    feed = logstore.LabelFeed(log_root, since, max_lag)
    while True:
        labelled = curation.labelled_rows(*feed.poll(), label_set)
        fresh = len(curation.new_rows(previous, labelled.rows, eval_texts))
        if fresh >= min_new:
            logger.info(
                "%d new labelled rows (needed %d) from %d labels posted since %s",
                fresh,
                min_new,
                len(feed.feedback),
                since.isoformat() if since else "the log's start",
            )
            if len(labelled.quarantined):
                logger.warning(
                    "%d feedback rows carry labels outside the label set; kept in the log, not trained on: %s",
                    len(labelled.quarantined),
                    sorted(set(labelled.quarantined["label"]))[:5],
                )
            return labelled, feed.newest.to_pydatetime() if feed.newest is not None else since
        if time.monotonic() >= deadline:
            raise LabelWaitTimeout(
                f"only {fresh} new labelled rows after {policy.label_wait_timeout_s:.0f}s "
                f"(need {min_new}); the champion is unchanged"
            )
        logger.info("waiting for labels: %d/%d", fresh, min_new)
        time.sleep(policy.label_poll_s)
