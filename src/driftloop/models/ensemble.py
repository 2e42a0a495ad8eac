"""The ensemble family: several families trained on the same rows, their calibrated probabilities averaged.

The member families are looked up through a function the family registry hands in
(:func:`driftloop.models.families.get_family`), so this module imports no family and the registry
can name the ensemble without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.core.types import Prediction
from driftloop.models.base import ModelFamily, TextClassifier


class EnsembleIntentModel:
    """The weighted mean of its members' probabilities (each temperature-calibrated on held-out
    rows, so their confidences are on one scale). Token counts and embeddings come from the first
    member that has embeddings (the transformer), so serving and embedding drift work as for it."""

    family = "ensemble"
    inline_texts = 0

    def __init__(self, members: Sequence[Any], weights: Sequence[float]):
        labels = {m.labels for m in members}
        if len(labels) != 1:
            raise ValueError("ensemble members must share their labels")
        self.members = list(members)
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.labels = members[0].labels
        self.pip_packages = tuple(sorted({pkg for m in members for pkg in getattr(m, "pip_packages", ())}))
        self.info = {"members": [m.family for m in members], "weights": self.weights.round(4).tolist()}
        owner = next((m for m in members if hasattr(m, "embed")), None)
        if owner is not None:
            self.embed = owner.embed  # only then: drift adds embedding drift for models with `embed`
        self._tokens = owner if owner is not None else members[0]

    def count_tokens(self, text: str) -> int:
        """Tokens the embedding member sees (the first member's when none embeds)."""
        return int(self._tokens.count_tokens(text))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """The weighted mean of the members' probabilities, shape (len(texts), len(labels))."""
        total = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        for w, m in zip(self.weights, self.members, strict=True):
            total = total + w * m.predict_proba(texts)
        return total

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """The most likely label of each text, with its averaged probability."""
        proba = self.predict_proba(texts)
        best = proba.argmax(axis=1)
        return [Prediction(self.labels[j], float(proba[i, j])) for i, j in enumerate(best)]


class EnsembleFamily:
    """``model.family: ensemble``: ``params.ensemble_members`` (default tfidf and the transformer
    in its configured mode) trained on the same rows, probabilities averaged with
    ``params.ensemble_weights``. ``family_of`` maps a member's name to its family (the registry's
    :func:`~driftloop.models.families.get_family`)."""

    name = "ensemble"

    def __init__(self, family_of: Callable[[str], ModelFamily]) -> None:
        self._family_of = family_of

    def fit(
        self,
        train: pd.DataFrame,
        params: dict[str, Any],
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
        checkpoint_root: Path | None = None,
    ) -> EnsembleIntentModel:
        """Train every member on ``train`` with the same ``params`` and seed, then combine them."""
        names = list(params.get("ensemble_members", ["tfidf", "transformer"]))
        weights = list(params.get("ensemble_weights", [1.0] * len(names)))
        if "ensemble" in names or len(names) < 2 or len(weights) != len(names) or min(weights) < 0:
            raise ValueError(
                f"model.params.ensemble_members / ensemble_weights: at least two other "
                f"families with one non-negative weight each, got {names} / {weights}"
            )
        members: list[TextClassifier] = [
            self._family_of(name).fit(train, params, seed=seed, progress=progress, checkpoint_root=checkpoint_root)
            for name in names
        ]
        return EnsembleIntentModel(members, weights)
