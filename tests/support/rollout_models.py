"""Deliberately bad challengers for the rollout tests: real models with one defect each.

They are saved into the MLflow registry like any model, in a file format this module registers
with driftloop.models.persist (their settings as JSON, the real model inside), so the serving app
loads them the normal way once it has imported this module (tests/integration/serve_app.py does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from driftloop.core.types import Prediction
from driftloop.models import persist


class _Wrapped:
    def __init__(self, inner):
        self.inner = inner
        self.family = getattr(inner, "family", "wrapped")
        self.labels = getattr(inner, "labels", ())

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.predict_proba(texts)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


class SlowClassifier(_Wrapped):
    """The same answers as ``inner``, ``delay_s`` slower per call."""

    def __init__(self, inner, delay_s: float):
        super().__init__(inner)
        self.delay_s = delay_s

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        time.sleep(self.delay_s)
        return self.inner.predict(texts)


class DegradingClassifier(_Wrapped):
    """Fine for its first ``healthy_calls`` calls in a process, then ``delay_s`` slower per call:
    the model that passes a canary and regresses under full traffic (a leak, a cold cache)."""

    def __init__(self, inner, healthy_calls: int, delay_s: float):
        super().__init__(inner)
        self.healthy_calls = healthy_calls
        self.delay_s = delay_s
        self.calls = 0

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.calls = 0  # each loaded copy counts its own calls

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        self.calls += 1
        if self.calls > self.healthy_calls:
            time.sleep(self.delay_s)
        return self.inner.predict(texts)


class FailingClassifier(_Wrapped):
    """Raises on every ``every``-th call of each loaded copy: a model that breaks on some inputs
    (``every`` >= 3 lets the loader's warm-up call through)."""

    def __init__(self, inner, every: int):
        super().__init__(inner)
        self.every = every
        self.calls = 0

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.calls = 0

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        self.calls += 1
        if self.calls % self.every == 0:
            raise ValueError("cannot handle this input")
        return self.inner.predict(texts)


def _format(cls, fields: tuple[str, ...]) -> None:
    def save(model, directory: Path) -> dict:
        persist.save_member(model.inner, directory / "inner")
        return {name: getattr(model, name) for name in fields}

    def load(body: dict, directory: Path):
        return cls(persist.load_member(directory / "inner"), **{name: body[name] for name in fields})

    persist.register_format(f"test-{cls.__name__}", cls, save, load)


_format(SlowClassifier, ("delay_s",))
_format(DegradingClassifier, ("healthy_calls", "delay_s"))
_format(FailingClassifier, ("every",))
