"""Model tasks: train, evaluate, register, move aliases."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from driftloop.adapters.history import ChampionHistory
from driftloop.adapters.registry import Registry
from driftloop.config.settings import ModelSettings
from driftloop.core.types import EvalReport, HistoryEntry, ModelRef
from driftloop.models import evaluation, families as modelling
from driftloop.models.families import TextClassifier
from driftloop.rollout import champion
from driftloop.tasks import SERVER_RETRIES


@task(cache_policy=NO_CACHE)
def train(
    frame: pd.DataFrame, cfg: ModelSettings, seed: int = 0, checkpoint_root: Path | None = None
) -> TextClassifier:
    """Fit a model of the configured family on ``frame`` (resuming from a checkpoint under
    ``checkpoint_root`` when the family keeps one)."""
    logger = get_run_logger()
    return modelling.get_family(cfg.family).fit(
        frame, dict(cfg.params), seed=seed, progress=logger.info, checkpoint_root=checkpoint_root
    )


@task(cache_policy=NO_CACHE)
def evaluate(model: TextClassifier, eval_set: pd.DataFrame) -> tuple[EvalReport, pd.DataFrame]:
    """The model's scores on the shared evaluation set, and one row per example."""
    return evaluation.evaluate(model, eval_set)


@task(cache_policy=NO_CACHE)
def write_eval_artifacts(report: EvalReport, rows: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """The evaluation's files (scores, per-example rows) under ``out_dir``."""
    return evaluation.write_eval_artifacts(report, rows, out_dir)


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def load_model(registry: Registry, ref: ModelRef) -> TextClassifier:
    """The classifier registered as ``ref``."""
    return registry.load(ref)


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def champion_ref(registry: Registry) -> ModelRef | None:
    """The version the ``champion`` alias points at, if any."""
    return registry.champion()


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def register_model(
    registry: Registry,
    model: TextClassifier,
    *,
    tags: dict[str, str],
    metrics: dict[str, float],
    params: dict,
    run_name: str,
    input_example: list[str],
    artifacts: dict[str, Path],
) -> ModelRef:
    """Log ``model`` in one MLflow run and register it as a new version with its tags."""
    return registry.register_model(
        model,
        tags=tags,
        metrics=metrics,
        params=params,
        run_name=run_name,
        input_example=input_example,
        artifacts=artifacts,
    )


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def move_alias(
    registry: Registry,
    history: ChampionHistory,
    alias: str,
    ref: ModelRef,
    *,
    action: str,
    reason: str,
    actor: str,
    report: str = "",
) -> HistoryEntry:
    """Point ``alias`` at ``ref`` and record the move in the history."""
    return champion.move_alias(registry, history, alias, ref, action=action, reason=reason, actor=actor, report=report)


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def version_tags(registry: Registry, ref: ModelRef) -> dict[str, str]:
    """The tags of version ``ref``."""
    return registry.version_tags(ref)


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def version_created(registry: Registry, ref: ModelRef) -> datetime | None:
    """When version ``ref`` was registered (UTC; None when the registry does not say): nothing
    logged before it can be its answer. One call for that version, whatever the registry holds."""
    return registry.created_at(ref)


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def clear_alias(
    registry: Registry, history: ChampionHistory, alias: str, *, reason: str, actor: str
) -> HistoryEntry | None:
    """Remove ``alias`` and record it in the history (None when it pointed nowhere)."""
    return champion.clear_alias(registry, history, alias, reason=reason, actor=actor)
