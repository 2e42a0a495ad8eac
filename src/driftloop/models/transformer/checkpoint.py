"""Resumable fine-tuning: the checkpoint key, and a folder holding the latest and the best state.

Every write goes to a temporary file first and replaces the old one with :func:`os.replace`, so a
crash mid-write leaves the previous file whole. torch is imported by the methods that save and
load, so this module (and :class:`TrainingInterrupted`) load without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop.config.transformer import TransformerParams
from driftloop.data.dataset import LABEL, TEXT

LATEST = "checkpoint.pt"
BEST = "best.pt"


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after_steps`` hook after a checkpoint was saved (tests resume from it)."""


def _frame_hash(train: pd.DataFrame) -> str:
    payload = json.dumps([train[TEXT].astype(str).tolist(), train[LABEL].astype(str).tolist()])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoint_key(train: pd.DataFrame, params: TransformerParams, seed: int) -> str:
    """``<training-set hash>-<settings hash>``: a checkpoint only resumes the run that wrote it."""
    settings = json.dumps({**params.learned(), "seed": seed}, sort_keys=True)
    return f"{_frame_hash(train)}-{hashlib.sha256(settings.encode()).hexdigest()[:16]}"


class Checkpointer:
    """One run's checkpoint folder: ``checkpoint.pt`` (network, optimizer and loop counters, to
    resume from) and ``best.pt`` (the weights of the best validation score so far)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load_latest(self, map_location: str) -> dict[str, Any] | None:
        """The latest saved training state, or None when there is none."""
        return self._load(LATEST, map_location)

    def save_latest(self, state: dict[str, Any]) -> None:
        """Replace the latest training state with ``state``."""
        self._save(state, LATEST)

    def load_best(self) -> dict[str, Any] | None:
        """The best weights saved so far (on the cpu), or None when there are none."""
        return self._load(BEST, "cpu")

    def save_best(self, weights: dict[str, Any]) -> None:
        """Replace the best weights with ``weights``."""
        self._save(weights, BEST)

    def remove(self) -> None:
        """Delete the folder (a finished run needs no checkpoint)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _load(self, name: str, map_location: str) -> dict[str, Any] | None:
        import torch

        path = self.folder / name
        if not path.is_file():
            return None
        # weights_only: tensors, numbers, strings and containers only; a checkpoint someone
        # replaced with a pickle that runs code is refused (UnpicklingError), never executed.
        state: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
        return state

    def _save(self, obj: dict[str, Any], name: str) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (name + ".tmp")
        torch.save(obj, tmp)
        os.replace(tmp, self.folder / name)  # a crash mid-write leaves the previous one whole
