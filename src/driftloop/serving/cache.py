"""The loaded models: where they come from, how one is loaded and warmed, which stay loaded."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from driftloop.core.types import ModelRef, Prediction, Routing
from driftloop.models.families import TextClassifier

log = logging.getLogger(__name__)


class ModelSource(Protocol):
    """Where the serving versions come from: the registry, or a fake in unit tests."""

    def routing(self) -> Routing:
        """The champion and the rollout state replicas converge to."""
        ...

    def load(self, ref: ModelRef) -> TextClassifier:
        """One registered version, ready to predict."""
        ...


@dataclass(frozen=True)
class LoadedModel:
    """One model version loaded (and warmed) in this process."""

    ref: ModelRef
    model: TextClassifier
    loaded_at: float


def _count_words(text: str) -> int:
    return len(text.split())


def token_counter(model: Any) -> Callable[[str], int]:
    """How many tokens a text is for ``model``: its own count when it has one (a family with a
    real tokenizer counts what it sees), whitespace-separated words otherwise."""
    return getattr(model, "count_tokens", None) or _count_words


def predict_texts(model: Any, texts: list[str]) -> tuple[list[Prediction], list[int]]:
    """The model's predictions for ``texts`` and each text's token count."""
    count = token_counter(model)
    return model.predict(texts), [count(t) for t in texts]


class ModelCache:
    """The loaded models by version: a load warms the model before it serves, and :meth:`keep`
    evicts every model routing no longer needs."""

    def __init__(self, source: ModelSource):
        self.source = source
        self._models: dict[ModelRef, LoadedModel] = {}

    def __contains__(self, ref: ModelRef) -> bool:
        return ref in self._models

    def get(self, ref: ModelRef) -> LoadedModel:
        """The loaded ``ref``, loaded from the source and warmed up when it is not here yet (not
        kept until :meth:`keep` names it). Raises what the source raises."""
        loaded = self._models.get(ref)
        if loaded is None:
            started = time.perf_counter()
            model = self.source.load(ref)
            # Warm-up: builds the model's lazy state here rather than on a request.
            model.predict(["warm up"])
            token_counter(model)("warm up")
            loaded = LoadedModel(ref, model, time.time())
            log.info("loaded %s in %.2fs", ref, time.perf_counter() - started)
        return loaded

    def keep(self, loaded: Iterable[LoadedModel], also: Iterable[ModelRef] = ()) -> None:
        """Hold exactly ``loaded``, plus those of ``also`` already held; evict the rest."""
        models = {m.ref: m for m in loaded}
        for ref in also:
            if ref not in models and ref in self._models:
                models[ref] = self._models[ref]
        self._models = models

    def refs(self) -> set[ModelRef]:
        """The versions held now."""
        return set(self._models)
