"""The compaction flow: closed log parts become Parquet; retention keeps what a model's DVC sets hold."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from driftloop.adapters import logstore, predlog, wiring
from driftloop.core.types import Prediction
from driftloop.flows.compaction import compaction
from driftloop.flows.training import training
from tests.support.flows import artifacts


def clock(start: datetime):
    first = round(start.timestamp() * 10**6) * 1000
    calls = iter(range(10**9))
    return lambda: first + next(calls) * 10**9


def test_compaction_keeps_rows_of_versioned_training_sets(settings):
    training(reason="v1", trigger="test")
    parts = wiring.build(settings)
    trained_text = parts.prepared().read("train")["text"].iloc[0]
    old = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=40)
    with predlog.PredictionLog(parts.log_root, clock=clock(old)) as log:
        log.write("kept", trained_text.upper(), Prediction("x", 0.9), "1", 1.0, 3)
        log.write("gone", "a text no data set holds", Prediction("x", 0.9), "1", 1.0, 3)
    with predlog.FeedbackLog(parts.log_root, clock=clock(old + timedelta(minutes=5))) as fb:
        fb.write("kept", "x")
        fb.write("gone", "x")
    for part in parts.log_root.rglob("*.jsonl"):  # as a writer leaves it: last written 40 days ago
        os.utime(part, (old.timestamp() + 600, old.timestamp() + 600))
    with predlog.PredictionLog(parts.log_root) as log:  # today's part, still open: left as it is
        log.write("today", "fresh", Prediction("x", 0.9), "1", 1.0, 1)

    out = compaction()

    assert {(r.kind, r.rows) for r in out.compacted} == {(logstore.PREDICTIONS, 2), (logstore.FEEDBACK, 2)}
    assert {(r.kind, r.rows_before, r.rows_kept) for r in out.retired} == {
        (logstore.PREDICTIONS, 2, 1),
        (logstore.FEEDBACK, 2, 1),
    }
    assert predlog.read_predictions(parts.log_root)["request_id"].tolist() == ["kept", "today"]
    assert predlog.read_feedback(parts.log_root)["request_id"].tolist() == ["kept"]
    assert len(list(parts.log_root.rglob("*.jsonl"))) == 1
    summary = artifacts("log-compaction")
    assert summary and "| predictions |" in summary[-1].data
