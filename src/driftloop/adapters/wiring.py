"""The adapters a run needs, built once from the settings at a flow's or command's entry."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.adapters.history import ChampionHistory, FileChampionHistory, FileTriggerLedger, TriggerLedger
from driftloop.adapters.logremote import RemoteLog
from driftloop.adapters.logstore import LogRoot
from driftloop.adapters.private import private_dir
from driftloop.adapters.registry.rest import RestModelSource, is_http
from driftloop.adapters.registry.trust import ModelTrust
from driftloop.adapters.s3 import ObjectStore
from driftloop.adapters.versioning import DatasetStore
from driftloop.config.settings import DataSettings, PrivacySettings, Settings
from driftloop.core.errors import InputError
from driftloop.core.redaction import Redactor
from driftloop.data.dataset import PreparedData, ensure_prepared

if TYPE_CHECKING:  # imported where it is built: importing it imports MLflow
    from driftloop.adapters.registry import Registry


@dataclass(frozen=True)
class Components:
    """The adapters of one run: registry, histories, data set store, and the folders it writes to."""

    registry: Registry
    history: ChampionHistory
    ledger: TriggerLedger
    datasets: DatasetStore
    log_root: LogRoot  # a folder, or the bucket (logs.backend: s3): what every logstore reader takes
    prepared_dir: Path  # one folder per data key below it (dataset.ensure_prepared)
    reports_dir: Path
    retrain_dir: Path
    data: DataSettings

    def prepared(self) -> PreparedData:
        """The configured data set's prepared splits (built on first use, keyed by what made them)."""
        return ensure_prepared(self.data, self.prepared_dir)


def history_stores(settings: Settings) -> tuple[ChampionHistory, TriggerLedger]:
    """The champion history and the trigger ledger of ``history.backend``: JSON Lines files under
    the state dir, or tables in PostgreSQL (the password from the variable
    ``history.password_env`` names, never from the configuration)."""
    cfg = settings.history
    if cfg.backend == "file":
        return FileChampionHistory(settings.history_path), FileTriggerLedger(settings.trigger_state_path)
    try:
        # Only this backend needs the PostgreSQL driver (the `stack` extra).
        from driftloop.adapters import history_pg
    except ImportError as exc:
        raise InputError(
            f"history.backend: postgres needs the PostgreSQL driver: pip install 'driftloop[stack]' ({exc})"
        ) from exc
    assert cfg.dsn is not None  # noqa: S101  narrows the type: HistorySettings requires it for postgres
    db = history_pg.Database(cfg.dsn, os.environ.get(cfg.password_env) or None, cfg.db_schema)
    return history_pg.PostgresChampionHistory(db), history_pg.PostgresTriggerLedger(db)


def log_root(settings: Settings) -> LogRoot:
    """Where the prediction and feedback logs are (``logs.backend``): the local folder, or the
    bucket's prefix with this process's spool and cache folders (adapters.logremote)."""
    cfg = settings.logs
    if cfg.backend == "local":
        return settings.log_dir
    assert cfg.s3_url is not None  # noqa: S101  narrows the type: LogSettings requires it for s3
    bucket, _, prefix = cfg.s3_url.removeprefix("s3://").partition("/")
    return RemoteLog(
        ObjectStore(settings.storage.s3_endpoint_url, bucket),
        prefix or "logs",
        cache=settings.log_cache_dir,
        spool=settings.log_dir,
        ship_every_s=cfg.ship_every_s,
        closed_after_s=cfg.closed_after_s,
    )


def redactor(cfg: PrivacySettings) -> Redactor | None:
    """What the log writers apply to user text before a line is written (None: ``privacy.redact``
    is off)."""
    return Redactor(cfg.kinds, cfg.patterns) if cfg.redact else None


def registry(settings: Settings) -> Registry:
    """The MLflow registry of ``settings`` (imports MLflow)."""
    from driftloop.adapters.registry import Registry

    return Registry(
        settings.tracking_uri,
        settings.registry.model_name,
        settings.registry.experiment,
        artifact_root=settings.artifact_root,
        trust=model_trust(settings),
    )


def model_trust(settings: Settings) -> ModelTrust:
    """The key this process signs model versions with and the public keys it loads them by."""
    return ModelTrust.from_environment(settings.key_dir, settings.registry.trusted_keys)


def serving_source(settings: Settings) -> RestModelSource | Registry:
    """Where a serving process reads the routing and loads models from: a tracking server over
    its REST API (no MLflow in the process), or the MLflow client for a store it opens itself
    (SQLite, a folder: the embedded default)."""
    if is_http(settings.tracking_uri):
        return RestModelSource(settings.tracking_uri, settings.registry.model_name, trust=model_trust(settings))
    return registry(settings)


def build(settings: Settings) -> Components:
    """The components for ``settings``."""
    state = settings.state_dir
    history, ledger = history_stores(settings)
    # Folders that hold user text are created 0700 (docs/security.md, "User text").
    for folder in (settings.log_dir, settings.datasets_dir, settings.reports_dir, state / "retrain"):
        private_dir(folder)
    return Components(
        registry=registry(settings),
        history=history,
        ledger=ledger,
        datasets=DatasetStore(settings.datasets_dir, settings.storage.dvc_remote, settings.storage.s3_endpoint_url),
        log_root=log_root(settings),
        prepared_dir=state / "prepared",
        reports_dir=settings.reports_dir,
        retrain_dir=state / "retrain",
        data=settings.data,
    )
