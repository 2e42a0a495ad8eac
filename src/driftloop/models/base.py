"""What every model family shares: the classifier and family interfaces, and temperature scaling.

A family turns a labelled frame into a :class:`TextClassifier`. The loop, the registry and the
serving app only see that Protocol, so a transformers family plugs in beside the TF-IDF default
without touching them. The families (:mod:`driftloop.models.families`, the transformer package and
the ensemble) import this module; it imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from driftloop.core.types import Prediction


@runtime_checkable
class TextClassifier(Protocol):
    """A trained intent classifier: what the registry stores and the serving app predicts with."""

    labels: tuple[str, ...]
    family: str

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities, shape (len(texts), len(labels))."""

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """The most likely label of each text, with its probability."""

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for one text (reported in /metrics and the prediction log)."""


class ModelFamily(Protocol):
    """A way of training a :class:`TextClassifier` (``model.family`` names one)."""

    name: str

    def fit(
        self,
        train: pd.DataFrame,
        params: dict[str, Any],
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
        checkpoint_root: Path | None = None,
    ) -> TextClassifier:
        """``checkpoint_root``: where a long-training family may keep resumable checkpoints."""


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of ``scores / temperature`` (shifted by each row's maximum, so it never overflows)."""
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the negative log-likelihood on held-out scores."""
    best, best_nll = 1.0, np.inf
    for t in np.geomspace(0.02, 5.0, 60):
        p = softmax(scores, t)
        nll = -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean()
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best
