"""Model selection as a subflow: one task per candidate on the task runner the settings name.

Prefect fixes a flow's task runner when the flow is defined; the runner here comes from the
settings at run time, so :func:`select_model` applies it with ``with_options`` on each call.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from driftloop.config.settings import ModelSettings, SelectionSettings
from driftloop.data import dataset
from driftloop.data.dataset import LABEL, TEXT
from driftloop.models import selection
from driftloop.models.selection import SelectionResult
from driftloop.tasks.selection import score_candidate


def task_runner(cfg: SelectionSettings) -> TaskRunner[Any]:
    """Sequential: one candidate at a time in this process. Dask: a running scheduler when
    ``dask.address`` is set, else a LocalCluster of worker processes for this run only."""
    if cfg.runner == "sequential":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner  # only a Dask run pays for importing distributed

    if cfg.dask.address:
        return DaskTaskRunner(address=cfg.dask.address)
    return DaskTaskRunner(
        cluster_kwargs={
            # Loopback only: the scheduler, the workers and their nannies accept no outside
            # connections. The scheduler always serves HTTP (health, metrics); without an address it
            # takes port 8787, so it gets a free loopback port, and no dashboard is served on it.
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
            "scheduler_kwargs": {"dashboard": False},
            "worker_dashboard_address": None,
            "n_workers": cfg.dask.n_workers,
            "threads_per_worker": cfg.dask.threads_per_worker,
            "processes": True,
        }
    )


def _scheduler_address() -> str | None:
    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    client = getattr(runner, "client", None)  # only the Dask runner has one
    return client.scheduler.address if client is not None else None


@flow(name="model-selection", flow_run_name="select a model ({cfg.runner})", log_prints=True)
def model_selection(training_set: str, base: ModelSettings, cfg: SelectionSettings, seed: int) -> SelectionResult:
    """Score every candidate of ``cfg.grid`` on ``training_set`` and choose one."""
    # Read here and shipped to the workers with each task, so a remote Dask worker needs no
    # access to this machine's files.
    train = dataset.read_labelled(training_set, TEXT, LABEL)
    candidates = selection.expand_grid(base, cfg.grid)
    futures = [
        score_candidate.submit(
            train,
            c,
            folds=cfg.folds,
            metric=cfg.metric,
            seed=seed,
            validation_fraction=cfg.validation_fraction,
            keep_model=not cfg.refit,
        )
        for c in candidates
    ]
    scores = [f.result() for f in futures]
    result = selection.choose(
        scores, folds=cfg.folds, runner=cfg.runner, scheduler=_scheduler_address(), refit=cfg.refit
    )
    get_run_logger().info(
        "chose %s (%s): cv %s %.4f",
        result.chosen.candidate.name,
        result.chosen.candidate.describe(),
        result.metric,
        result.chosen.score,
    )
    scheme = (
        f"one stratified {cfg.validation_fraction:.0%} holdout"
        if cfg.folds == 1
        else f"{cfg.folds}-fold cross-validation"
    )
    create_table_artifact(
        result.table(),
        key="model-selection",
        description=f"{len(candidates)} candidates, {scheme} on the training set, runner {cfg.runner}",
    )
    return result


def select_model(training_set: str, base: ModelSettings, cfg: SelectionSettings, seed: int) -> SelectionResult | None:
    """The chosen settings, or None without a grid (then nothing runs and ``base`` trains)."""
    if not cfg.grid:
        return None
    return model_selection.with_options(task_runner=task_runner(cfg))(training_set, base, cfg, seed)
