"""Model selection task: one candidate scored by cross-validation, wherever the runner puts it."""

from __future__ import annotations

import os
from dataclasses import replace

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from driftloop.models import selection
from driftloop.models.selection import Candidate, CandidateScore


def _where() -> str:
    """The Dask worker's address when a Dask worker runs this, else this process's pid."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


@task(cache_policy=NO_CACHE, task_run_name="score {candidate.name}")
def score_candidate(
    train: pd.DataFrame,
    candidate: Candidate,
    *,
    folds: int,
    metric: str,
    seed: int,
    validation_fraction: float = 0.2,
    keep_model: bool = False,
) -> CandidateScore:
    """Score one candidate's settings on ``train`` (cross-validation or a holdout) and say where it ran."""
    score = selection.score_candidate(
        train,
        candidate,
        folds=folds,
        metric=metric,
        seed=seed,
        validation_fraction=validation_fraction,
        keep_model=keep_model,
    )
    get_run_logger().info(
        "%s (%s): cv %s %.4f in %.1fs", candidate.name, candidate.describe(), metric, score.score, score.fit_s
    )
    return replace(score, worker=_where())
