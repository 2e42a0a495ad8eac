"""Fakes for serving's unit tests: a model that always answers "a", and a registry stand-in
(``FakeSource``) with a movable champion whose loads are recorded and can be made to fail."""

from __future__ import annotations

from driftloop.core.types import ModelRef, Prediction, RolloutState, Routing


class FakeModel:
    family = "fake"
    labels = ("a", "b")

    def __init__(self, version: str):
        self.version = version
        self.predicted = 0

    def predict_proba(self, texts):
        raise NotImplementedError

    def predict(self, texts):
        self.predicted += len(texts)
        return [Prediction("a", 0.9) for _ in texts]

    def count_tokens(self, text):
        return len(text.split())


class FakeSource:
    """A registry stand-in: a movable champion, loads recorded, chosen versions failing."""

    def __init__(self):
        self.ref: ModelRef | None = None
        self.state = RolloutState()
        self.monitor = None  # a MonitorStatus, as the registered model's tag carries it
        self.loads: list[str] = []
        self.broken: set[str] = set()

    def routing(self):
        return Routing(self.ref, self.state, self.monitor)

    def load(self, ref):
        self.loads.append(ref.version)
        if ref.version in self.broken:
            raise RuntimeError(f"cannot load v{ref.version}")
        return FakeModel(ref.version)


def ref(version: str) -> ModelRef:
    return ModelRef("m", version)
