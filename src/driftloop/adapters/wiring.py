"""The adapters a run needs, built once from the settings at a flow's or command's entry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from driftloop.adapters.history import ChampionHistory, TriggerLedger
from driftloop.adapters.registry import Registry
from driftloop.adapters.versioning import DatasetStore
from driftloop.config.settings import DataSettings, Settings
from driftloop.data.dataset import PreparedData, ensure_prepared


@dataclass(frozen=True)
class Components:
    """The adapters of one run: registry, histories, data set store, and the folders it writes to."""

    registry: Registry
    history: ChampionHistory
    ledger: TriggerLedger
    datasets: DatasetStore
    log_root: Path
    prepared_dir: Path  # one folder per data key below it (dataset.ensure_prepared)
    reports_dir: Path
    retrain_dir: Path
    data: DataSettings

    def prepared(self) -> PreparedData:
        """The configured data set's prepared splits (built on first use, keyed by what made them)."""
        return ensure_prepared(self.data, self.prepared_dir)


def build(settings: Settings) -> Components:
    """The components for ``settings``."""
    state = settings.state_dir
    return Components(
        registry=Registry(
            settings.tracking_uri,
            settings.registry.model_name,
            settings.registry.experiment,
            artifact_root=settings.artifact_root,
        ),
        history=ChampionHistory(settings.history_path),
        ledger=TriggerLedger(settings.trigger_state_path),
        datasets=DatasetStore(settings.datasets_dir, settings.storage.dvc_remote, settings.storage.s3_endpoint_url),
        log_root=settings.log_dir,
        prepared_dir=state / "prepared",
        reports_dir=settings.reports_dir,
        retrain_dir=state / "retrain",
        data=settings.data,
    )
