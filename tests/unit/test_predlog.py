"""The prediction and feedback logs: pure files in a temp dir."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime

import pandas as pd
import pytest

from driftloop.adapters.predlog import (
    FEEDBACK_COLUMNS,
    PREDICTION_COLUMNS,
    SKIPPED_LINES,
    FeedbackLog,
    PredictionLog,
    join_feedback,
    read_feedback,
    read_predictions,
)
from driftloop.core.types import Prediction

WEIRD_TEXTS = [
    "plain",
    'quote " backslash \\ tab \t',
    "line\nbreak\r\nand more",
    "où 💳 ünïcode",
    "lone \ud800 surrogate",
    "",
]


def at(iso: str, step_ns: int = 1000):
    """A clock starting at ``iso`` (UTC) that advances ``step_ns`` per call."""
    start = round(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 10**6) * 1000
    calls = iter(range(10**9))
    return lambda: start + next(calls) * step_ns


def test_predictions_round_trip_exactly(tmp_path):
    with PredictionLog(tmp_path, fsync_interval_s=0.05) as log:
        for i, text in enumerate(WEIRD_TEXTS):
            log.write(f"id{i}", text, Prediction(f"intent_{i}", 0.1 * i + 0.05), "7", 0.25 * i, i)
    frame = read_predictions(tmp_path)
    assert list(frame.columns) == list(PREDICTION_COLUMNS)
    assert frame.attrs[SKIPPED_LINES] == 0
    assert list(frame["request_id"]) == [f"id{i}" for i in range(len(WEIRD_TEXTS))]
    assert list(frame["text"]) == WEIRD_TEXTS
    assert list(frame["intent"]) == [f"intent_{i}" for i in range(len(WEIRD_TEXTS))]
    assert list(frame["confidence"]) == [0.1 * i + 0.05 for i in range(len(WEIRD_TEXTS))]
    assert list(frame["model_version"]) == ["7"] * len(WEIRD_TEXTS)
    assert list(frame["latency_ms"]) == [0.25 * i for i in range(len(WEIRD_TEXTS))]
    assert list(frame["tokens"]) == list(range(len(WEIRD_TEXTS)))
    assert str(frame["time"].dt.tz) == "UTC"
    assert frame["time"].is_monotonic_increasing


def test_each_line_is_a_json_object_with_an_iso_utc_time(tmp_path):
    with PredictionLog(tmp_path, clock=at("2024-05-01T12:34:56.000250")) as log:
        log.write("a", "t", Prediction("x", 0.5), "1", 1.0, 1)
        path = log.path
    line = path.read_text().splitlines()[0]
    record = json.loads(line)
    # "error" is written only on failed predictions
    assert set(record) == set(PREDICTION_COLUMNS) - {"error"}
    assert record["slot"] == "champion"
    assert record["time"] == "2024-05-01T12:34:56.000250+00:00"
    assert datetime.fromisoformat(record["time"]).tzinfo is not None


def test_a_batch_is_one_line_per_text_with_one_time(tmp_path):
    preds = [Prediction("a", 0.9), Prediction("b", 0.8), Prediction("c", 0.7)]
    with PredictionLog(tmp_path) as log:
        log.write_batch(["r1", "r2", "r3"], ["x", "y", "z"], preds, "2", 3.5, [1, 2, 3])
        with pytest.raises(ValueError, match="one entry per text"):
            log.write_batch(["r4"], ["x", "y"], preds[:1], "2", 1.0, [1])
    frame = read_predictions(tmp_path)
    assert list(frame["request_id"]) == ["r1", "r2", "r3"]
    assert frame["time"].nunique() == 1
    assert list(frame["latency_ms"]) == [3.5] * 3


def test_files_are_partitioned_by_utc_date_and_named_by_process(tmp_path):
    # Two seconds apart across midnight UTC: the second line opens the next day's file.
    with PredictionLog(tmp_path, clock=at("2024-03-01T23:59:59", step_ns=2 * 10**9)) as log:
        log.write("before", "t", Prediction("x", 0.5), "1", 1.0, 1)
        log.write("after", "t", Prediction("x", 0.5), "1", 1.0, 1)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl"))
    assert len(files) == 2
    for path, day in zip(files, ["2024-03-01", "2024-03-02"], strict=True):
        assert re.fullmatch(rf"predictions/date={day}/part-{os.getpid()}-\d{{8}}T\d{{12}}Z\.jsonl", path)
    assert list(read_predictions(tmp_path)["request_id"]) == ["before", "after"]


@pytest.mark.parametrize(
    "since", [datetime(2024, 3, 2), datetime(2024, 3, 2, tzinfo=UTC)], ids=["naive-is-utc", "aware"]
)
def test_since_keeps_only_newer_predictions(tmp_path, since):
    with PredictionLog(tmp_path, clock=at("2024-03-01T23:59:59", step_ns=2 * 10**9)) as log:
        log.write("before", "t", Prediction("x", 0.5), "1", 1.0, 1)
        log.write("after", "t", Prediction("x", 0.5), "1", 1.0, 1)
    assert list(read_predictions(tmp_path, since=since)["request_id"]) == ["after"]


def test_a_truncated_last_line_is_skipped_and_counted(tmp_path):
    with PredictionLog(tmp_path) as log:
        log.write("a", "one", Prediction("x", 0.5), "1", 1.0, 1)
        log.write("b", "two", Prediction("x", 0.5), "1", 1.0, 1)
        path = log.path
    # What a crash of the machine mid-line leaves: a line without its end.
    with open(path, "ab") as f:
        f.write(b'{"request_id":"c","time":"2024-')
    frame = read_predictions(tmp_path)
    assert list(frame["request_id"]) == ["a", "b"]
    assert frame.attrs[SKIPPED_LINES] == 1


def test_a_garbled_line_inside_a_file_is_skipped_and_counted(tmp_path):
    with PredictionLog(tmp_path) as log:
        log.write("a", "one", Prediction("x", 0.5), "1", 1.0, 1)
        path = log.path
    with open(path, "ab") as f:
        f.write(b"not json\n[1, 2]\n")
    with PredictionLog(tmp_path) as log:  # a restart appends to a new file beside it
        log.write("b", "two", Prediction("x", 0.5), "1", 1.0, 1)
    frame = read_predictions(tmp_path)
    assert sorted(frame["request_id"]) == ["a", "b"]
    assert frame.attrs[SKIPPED_LINES] == 2


def test_reading_nothing_gives_empty_frames_with_the_columns(tmp_path):
    preds, feedback = read_predictions(tmp_path), read_feedback(tmp_path)
    assert preds.empty and list(preds.columns) == list(PREDICTION_COLUMNS)
    assert feedback.empty and list(feedback.columns) == list(FEEDBACK_COLUMNS)
    assert list(join_feedback(preds, feedback).columns) == [*PREDICTION_COLUMNS, "label"]


def test_feedback_round_trips(tmp_path):
    with FeedbackLog(tmp_path) as log:
        log.write("r1", "card_arrival")
        log.write("r2", 'new "intent"')
        assert log.path.parent.parent.name == "feedback"
    frame = read_feedback(tmp_path)
    assert list(frame.columns) == list(FEEDBACK_COLUMNS)
    assert list(frame["label"]) == ["card_arrival", 'new "intent"']


def test_join_adds_the_latest_label_per_request_and_keeps_the_rows(tmp_path):
    with PredictionLog(tmp_path) as log:
        for rid in ["r1", "r2", "r3"]:
            log.write(rid, "t", Prediction("guess", 0.5), "1", 1.0, 1)
    # Two feedback files, as from two replicas: the later label must win whatever the file order.
    with FeedbackLog(tmp_path, clock=at("2024-01-01T00:00:10")) as late:
        late.write("r1", "corrected")
    with FeedbackLog(tmp_path, clock=at("2024-01-01T00:00:05")) as early:
        early.write("r1", "first")
        early.write("r2", "only")
        early.write("unknown", "ignored")
    joined = join_feedback(read_predictions(tmp_path), read_feedback(tmp_path))
    assert list(joined["request_id"]) == ["r1", "r2", "r3"]
    assert list(joined["label"]) == ["corrected", "only", None]


def test_join_replaces_an_existing_label_column():
    preds = pd.DataFrame({"request_id": ["a", "b"], "label": ["old", "old"]})
    feedback = pd.DataFrame({"request_id": ["a"], "time": pd.to_datetime(["2024-01-01"], utc=True), "label": ["new"]})
    assert list(join_feedback(preds, feedback)["label"]) == ["new", None]


def test_a_closed_log_refuses_writes_and_closes_once(tmp_path):
    log = PredictionLog(tmp_path)
    log.write("a", "t", Prediction("x", 0.5), "1", 1.0, 1)
    log.flush()
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.write("b", "t", Prediction("x", 0.5), "1", 1.0, 1)
    assert list(read_predictions(tmp_path)["request_id"]) == ["a"]


def test_fsync_interval_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="fsync_interval_s"):
        PredictionLog(tmp_path, fsync_interval_s=0)


def test_shadow_and_failed_predictions_are_kept_apart_from_the_answers(tmp_path):
    with PredictionLog(tmp_path) as log:
        log.write_batch(["r1", "r2"], ["x", "y"], [Prediction("a", 0.9), Prediction("b", 0.4)], "1", 2.0, [1, 1])
        log.write_batch(
            ["r1", "r2"], ["x", "y"], [Prediction("a", 0.8), Prediction("c", 0.3)], "2", 5.0, [1, 1], slot="shadow"
        )
        log.write_batch(["r3"], ["z"], [Prediction("a", 0.7)], "2", 1.0, [1], slot="canary")
        log.write_errors(["r4"], ["w"], "2", 0.5, "canary", 'ValueError: "bad" input')
    answered = read_predictions(tmp_path)
    assert list(answered["request_id"]) == ["r1", "r2", "r3"]
    assert list(answered["slot"]) == ["champion", "champion", "canary"]
    everything = read_predictions(tmp_path, include_shadow=True, include_errors=True)
    assert len(everything) == 6
    shadow = everything[everything["slot"] == "shadow"]
    assert list(shadow["request_id"]) == ["r1", "r2"] and set(shadow["model_version"]) == {"2"}
    failed = everything[everything["error"] != ""]
    assert list(failed["request_id"]) == ["r4"]
    assert failed["error"].iloc[0] == 'ValueError: "bad" input'
    assert failed["intent"].isna().all() and failed["confidence"].isna().all()
    assert (everything.loc[everything["error"] == "", "error"] == "").all()
