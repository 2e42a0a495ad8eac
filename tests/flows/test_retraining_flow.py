"""A retrain reads only the labels posted after its champion's training set was built."""

from __future__ import annotations

import pandas as pd

from driftloop.adapters import logstore, predlog, wiring
from driftloop.flows.retraining import retraining
from driftloop.flows.training import training
from driftloop.rollout import champion as aliases
from driftloop.rollout.candidate import LABELS_UNTIL_TAG


def serve_earlier(parts, frame: pd.DataFrame, tag: str, hours_ago: float, step_ms: int = 1) -> None:
    """``frame`` answered by the champion from ``hours_ago`` hours ago, a line every ``step_ms``,
    then the first half of it labelled."""
    start = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=hours_ago)
    ticks = iter(range(10**6))

    def clock() -> int:
        return start.value + next(ticks) * step_ms * 10**6

    ref = parts.registry.champion()
    texts = frame["text"].tolist()
    ids = [f"{tag}-{i}" for i in range(len(texts))]
    with predlog.PredictionLog(parts.log_root, clock=clock) as log:
        log.write_batch(ids, texts, parts.registry.load(ref).predict(texts), ref.version, 1.0, [3] * len(texts))
    with predlog.FeedbackLog(parts.log_root, clock=clock) as fb:
        for rid, label in list(zip(ids, frame["label"], strict=True))[: len(ids) // 2]:
            fb.write(rid, label)


def test_a_retrain_reads_only_the_labels_after_the_champions_cut_off(settings, monkeypatch):
    training(reason="v1", trigger="test")
    parts = wiring.build(settings)
    known = parts.prepared().read("live_known")
    serve_earlier(parts, known.iloc[:200], "a", hours_ago=6, step_ms=60_000)  # a line a minute
    feeds: list[logstore.LabelFeed] = []
    real = logstore.LabelFeed

    def recorded(*args, **kwargs):
        feeds.append(real(*args, **kwargs))
        return feeds[-1]

    monkeypatch.setattr(logstore, "LabelFeed", recorded)

    first = retraining(reason="labels a", min_new_labels=50, roll_out=False)
    labels = predlog.read_feedback(parts.log_root)
    cut_off = parts.registry.version_tags(first.candidate)[LABELS_UNTIL_TAG]
    assert pd.Timestamp(cut_off) == labels["time"].max()
    assert feeds[-1]._cursor.since is None  # v1 was trained on the base set: every label counts

    # the candidate serves (by hand here: the rollout flow has its own tests); new labels arrive
    aliases.move_alias(
        parts.registry, parts.history, "champion", first.candidate, action="promote", reason="test", actor="test"
    )
    serve_earlier(parts, known.iloc[200:400], "b", hours_ago=0)
    second = retraining(reason="labels b", min_new_labels=50, roll_out=False)
    feed = feeds[-1]
    assert feed._cursor.since is not None and feed._cursor.since < pd.Timestamp(cut_off)
    read = set(feed.feedback["request_id"])
    assert {f"b-{i}" for i in range(100)} <= read
    # labelled a minute apart: only those within the clock-skew margin (5 min) of the cut-off again
    assert not read & {f"a-{i}" for i in range(90)}
    newest = predlog.read_feedback(parts.log_root)["time"].max()
    assert pd.Timestamp(parts.registry.version_tags(second.candidate)[LABELS_UNTIL_TAG]) == newest


def test_a_malformed_cut_off_tag_reads_every_label():
    from datetime import UTC, datetime

    from prefect.logging import disable_run_logger

    from driftloop.core.types import ModelRef
    from driftloop.flows.retraining import labels_cut_off

    champion = ModelRef("m", "3")
    with disable_run_logger():
        assert labels_cut_off({LABELS_UNTIL_TAG: "2026-12-01T10:00:00+00:00"}, champion) == datetime(
            2026, 12, 1, 10, tzinfo=UTC
        )
        assert labels_cut_off({LABELS_UNTIL_TAG: "last tuesday"}, champion) is None
        assert labels_cut_off({}, champion) is None
