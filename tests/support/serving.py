"""What the serving tests share: the labels and texts of their tiny models, publishing a model as
the champion, and reading /metrics."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from driftloop.adapters.registry import CHAMPION, Registry
from driftloop.core.types import ModelRef
from driftloop.models.families import TextClassifier

LABELS_V1 = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "pin_blocked"]
TEXTS = [
    "my card has not arrived yet",
    "I lost my card in the street",
    "what is the exchange rate",
    "my top up did not work",
    "my pin is blocked",
    "when will the card come",
    "someone stole my card",
    "the rate you gave me is wrong",
    "top-up failed twice",
    "I typed the wrong pin three times",
    "where is my new card",
    "card stolen yesterday",
]


def publish(registry: Registry, model: TextClassifier) -> ModelRef:
    ref = registry.register_model(model, input_example=TEXTS[:2])
    registry.set_alias(CHAMPION, ref)
    return ref


def metric_samples(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    text = client.get("/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
