"""The training rows as the transformer family uses them: texts, label indices and a stratified
validation mask (early stopping and the temperature are fitted on rows the weights never saw)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from driftloop.data.dataset import LABEL, TEXT


def validation_split(labels: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """A stratified boolean mask of validation rows: ``fraction`` of each label (at least one of
    each label with two rows or more, so every label is seen on both sides)."""
    values = np.asarray(labels)
    mask = np.zeros(len(values), dtype=bool)
    rng = np.random.default_rng(seed)
    for label in sorted(set(values.tolist())):
        rows = np.flatnonzero(values == label)
        if len(rows) < 2:
            continue
        rng.shuffle(rows)
        mask[rows[: max(1, round(len(rows) * fraction))]] = True
    return mask


@dataclass(frozen=True)
class TrainingData:
    """``texts[i]`` has label ``labels[y[i]]``; ``held[i]`` marks a validation row."""

    labels: list[str]
    texts: list[str]
    y: np.ndarray
    held: np.ndarray

    @classmethod
    def from_frame(cls, train: pd.DataFrame, validation_fraction: float, seed: int) -> TrainingData:
        """The frame's rows with a seeded validation split (none when it would leave either side
        empty); raises :class:`ValueError` for fewer than two labels."""
        labels = sorted(train[LABEL].astype(str).unique())
        if len(labels) < 2:
            raise ValueError(f"training needs at least 2 labels, got {labels}")
        y = np.searchsorted(np.array(labels), train[LABEL].astype(str).to_numpy())
        texts = train[TEXT].astype(str).tolist()
        held = validation_split(train[LABEL].astype(str).tolist(), validation_fraction, seed)
        if held.sum() == 0 or (~held).sum() == 0:
            held = np.zeros(len(texts), dtype=bool)
        return cls(labels, texts, y, held)

    @property
    def train_rows(self) -> np.ndarray:
        """Indices of the training rows."""
        return np.flatnonzero(~self.held)

    @property
    def val_rows(self) -> np.ndarray:
        """Indices of the validation rows."""
        return np.flatnonzero(self.held)
