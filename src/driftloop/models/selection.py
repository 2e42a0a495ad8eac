"""Model selection: candidate settings from a grid, each scored by k-fold cross-validation on the
training set, and a deterministic choice among them.

Only the training set is split here. The shared evaluation set judges the chosen model against the
champion afterwards; tuning on it as well would flatter every candidate in that comparison.

Nothing here knows where a candidate is scored: the flow hands :func:`score_candidate` to a
Prefect task runner (in process or on Dask workers), and because a score depends only on the
data, the candidate and the seed, every runner produces the same numbers and the same choice.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config.settings import ModelSettings
from driftloop.data.dataset import LABEL
from driftloop.models.evaluation import evaluate
from driftloop.models.families import get_family

# Means are compared after rounding, so a difference in the last bits of a float sum never
# decides between two candidates that scored the same.
_SCORE_DECIMALS = 12


@dataclass(frozen=True)
class Candidate:
    """One point of the grid: the base model settings with ``overrides`` applied."""

    index: int  # position in grid order; the tie-break prefers the lower one
    overrides: dict[str, Any]
    model: ModelSettings

    @property
    def name(self) -> str:
        """``c<index>``: the candidate's short name in tables and run names."""
        return f"c{self.index}"

    def describe(self) -> str:
        """The overrides as ``key=value`` pairs (``base settings`` when there are none)."""
        return " ".join(f"{k}={_plain(v)}" for k, v in self.overrides.items()) or "base settings"


@dataclass(frozen=True)
class CandidateScore:
    """A candidate's ``metric`` on each fold, and how long scoring it took."""

    candidate: Candidate
    metric: str
    fold_scores: tuple[float, ...]
    fit_s: float
    # Where it was scored ("pid 123" in process, a Dask worker's address); not part of the result.
    worker: str = ""
    # The holdout-trained model (folds 1 with keep_model): registered as is when selection.refit
    # is false, so an expensive family is not fitted a second time on the whole training set.
    model: Any = field(default=None, repr=False, compare=False)
    train_rows: int = 0  # rows the kept model was fitted on

    @property
    def score(self) -> float:
        """The mean over the folds."""
        return float(np.mean(self.fold_scores))


@dataclass(frozen=True)
class SelectionResult:
    """The chosen candidate, every candidate's score, and how the selection was run."""

    chosen: CandidateScore
    scores: tuple[CandidateScore, ...]  # grid order
    metric: str
    folds: int
    runner: str  # "sequential" or "dask"
    scheduler: str | None = None  # the Dask scheduler's address, for a Dask run
    refit: bool = True  # False: the chosen holdout model is registered as is

    @property
    def model(self) -> ModelSettings:
        """The chosen candidate's model settings."""
        return self.chosen.candidate.model

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate, for the Prefect table artifact."""
        return [
            {
                "candidate": s.candidate.name,
                "settings": s.candidate.describe(),
                f"cv {s.metric}": round(s.score, 4),
                "folds": ", ".join(f"{f:.4f}" for f in s.fold_scores),
                "fit s": round(s.fit_s, 1),
                "worker": s.worker,
                "chosen": "yes" if s.candidate.index == self.chosen.candidate.index else "",
            }
            for s in self.scores
        ]

    def tags(self) -> dict[str, str]:
        """What the registered model version records about how its settings were chosen."""
        return {
            "selection.candidate": self.chosen.candidate.name,
            "selection.overrides": json.dumps(_plain(self.chosen.candidate.overrides), sort_keys=True),
            "selection.metric": self.metric,
            "selection.score": f"{self.chosen.score:.6f}",
            "selection.folds": str(self.folds),
            "selection.candidates": str(len(self.scores)),
            "selection.runner": self.runner + (f" {self.scheduler}" if self.scheduler else ""),
            "selection.refit": str(self.refit).lower(),
        }


def expand_grid(base: ModelSettings, grid: Mapping[str, Sequence[Any]]) -> list[Candidate]:
    """Every combination of the grid's values, in the grid's key order, the last key varying
    fastest. The key ``family`` replaces the model family; every other key a parameter."""
    if not grid:
        return [Candidate(0, {}, base)]
    keys = list(grid)
    candidates = []
    for index, values in enumerate(itertools.product(*(grid[k] for k in keys))):
        overrides = dict(zip(keys, values, strict=True))
        family = overrides.get("family", base.family)
        params = {**base.params, **{k: v for k, v in overrides.items() if k != "family"}}
        candidates.append(Candidate(index, overrides, ModelSettings(family=family, params=params)))
    return candidates


def fold_ids(labels: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """A stratified fold number for each row: each label's rows are shuffled with ``seed`` and
    dealt out in turn, so every fold sees every label with enough rows, whatever the row order."""
    values = np.asarray(labels)
    out = np.empty(len(values), dtype=np.int64)
    rng = np.random.default_rng(seed)
    # Sorted labels and a per-label offset keep small labels from all landing in fold 0.
    offset = 0
    for label in sorted(set(values.tolist())):
        rows = np.flatnonzero(values == label)
        rng.shuffle(rows)
        out[rows] = (np.arange(len(rows)) + offset) % folds
        offset += len(rows)
    return out


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
    """Mean ``metric`` over ``folds`` cross-validation folds of ``train``; with ``folds == 1``,
    ``metric`` on one stratified holdout of about ``validation_fraction`` of the rows, and with
    ``keep_model`` the model fitted on the other rows comes back with the score."""
    if keep_model and folds != 1:
        raise ValueError("model selection: keep_model needs folds 1 (k folds fit k models)")
    family = get_family(candidate.model.family)
    if folds == 1:
        # The first of round(1 / fraction) stratified folds: the same dealing as k-fold, scored once.
        ids = fold_ids(train[LABEL].tolist(), max(2, round(1 / validation_fraction)), seed)
    else:
        ids = fold_ids(train[LABEL].tolist(), folds, seed)
    started = time.perf_counter()
    scores = []
    for k in range(folds):
        model = family.fit(train[ids != k], dict(candidate.model.params), seed=seed)
        report, _ = evaluate(model, train[ids == k])
        scores.append(float(report.metrics()[metric]))
    fit_s = time.perf_counter() - started
    if keep_model:
        return CandidateScore(candidate, metric, tuple(scores), fit_s, model=model, train_rows=int((ids != 0).sum()))
    return CandidateScore(candidate, metric, tuple(scores), fit_s)


def pick_best(scores: Sequence[CandidateScore]) -> CandidateScore:
    """The highest mean score; on a tie the candidate earlier in grid order, so the choice never
    depends on which worker finished first."""
    if not scores:
        raise ValueError("model selection: no candidates were scored")
    return min(scores, key=lambda s: (-round(s.score, _SCORE_DECIMALS), s.candidate.index))


def choose(
    scores: Sequence[CandidateScore], *, folds: int, runner: str, scheduler: str | None = None, refit: bool = True
) -> SelectionResult:
    """The best candidate; only its kept model (``refit`` false) stays in memory."""
    ordered = tuple(sorted(scores, key=lambda s: s.candidate.index))
    metrics = {s.metric for s in ordered}
    if len(metrics) > 1:
        raise ValueError(f"model selection: candidates scored on different metrics {sorted(metrics)}")
    best = pick_best(ordered)
    if not refit and best.model is None:
        raise ValueError("model selection: refit is false but the chosen candidate's model was not kept")
    ordered = tuple(s if s is best and not refit else replace(s, model=None) for s in ordered)
    chosen = next(s for s in ordered if s.candidate.index == best.candidate.index)
    return SelectionResult(chosen, ordered, ordered[0].metric, folds, runner, scheduler, refit)


def _plain(value: Any) -> Any:
    """YAML lists and tuples alike, for tags and tables that must not differ by container type."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
