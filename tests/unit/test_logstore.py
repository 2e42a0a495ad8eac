"""The log store: bounded reads, cursors, crash-safe compaction to Parquet, retention. Pure files."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from driftloop.adapters import logstore
from driftloop.adapters.logstore import (
    FEEDBACK,
    MANIFEST,
    PREDICTIONS,
    SKIPPED_LINES,
    LabelFeed,
    LiveLog,
    LogCursor,
    Manifest,
    apply_retention,
    compact,
    feedback_for,
    read_feedback,
    read_predictions,
    read_since,
    read_window,
)
from driftloop.adapters.predlog import IDLE_ROTATE_S, FeedbackLog, PredictionLog
from driftloop.core.types import SLOT_CANARY, SLOT_SHADOW, Prediction
from driftloop.data import curation

LATER = timedelta(hours=2)  # a compaction "now" at which every part written in a test is closed


def clock(start: datetime, step_s: float = 1.0):
    """Epoch nanoseconds from ``start`` (UTC), advancing ``step_s`` per call."""
    first = round(start.replace(tzinfo=UTC).timestamp() * 10**6) * 1000
    calls = iter(range(10**9))
    return lambda: first + next(calls) * round(step_s * 10**9)


def write_day(
    root: Path, day: datetime, n: int, *, tag: str, texts: list[str] | None = None, labelled: int = 0, version="1"
) -> list[str]:
    """``n`` predictions one second apart from ``day`` (12:00 UTC when it is a midnight), the first
    ``labelled`` of them labelled a minute after the last one."""
    ids = [f"{tag}-{i}" for i in range(n)]
    texts = texts or [f"{tag} text {i}" for i in range(n)]
    start = day if day.hour else day.replace(hour=12)
    with PredictionLog(root, clock=clock(start)) as log:
        for rid, text in zip(ids, texts, strict=True):
            log.write(rid, text, Prediction("intent_a", 0.9), version, 1.0, 3)
    if labelled:
        with FeedbackLog(root, clock=clock(start + timedelta(seconds=n + 60))) as fb:
            for rid in ids[:labelled]:
                fb.write(rid, "intent_b")
    return ids


def files(root: Path, pattern: str) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(pattern))


def compact_all(root: Path, **kw):
    return compact(root, now=datetime.now(UTC) + LATER, **kw)


DAY = datetime(2026, 3, 10)


# -- reads across compacted and fresh parts -------------------------------------------------------------


def test_reads_see_compacted_parquet_and_fresh_jsonl_together_each_row_once(tmp_path):
    write_day(tmp_path, DAY, 30, tag="d1", labelled=5)
    write_day(tmp_path, DAY + timedelta(days=1), 20, tag="d2", labelled=5)
    before_p, before_f = read_predictions(tmp_path), read_feedback(tmp_path)
    results = compact_all(tmp_path)
    assert {(r.kind, r.partition, r.rows) for r in results} == {
        (PREDICTIONS, "date=2026-03-10", 30),
        (PREDICTIONS, "date=2026-03-11", 20),
        (FEEDBACK, "date=2026-03-10", 5),
        (FEEDBACK, "date=2026-03-11", 5),
    }
    assert files(tmp_path, "*.jsonl") == []
    assert len(files(tmp_path, "*.parquet")) == 4
    # fresh lines after the compaction: a new part beside the day's Parquet file
    write_day(tmp_path, DAY + timedelta(days=1, hours=15), 10, tag="d2late", labelled=2)
    after = read_predictions(tmp_path)
    assert after["request_id"].is_unique and len(after) == 60
    pd.testing.assert_frame_equal(after.iloc[:50].reset_index(drop=True), before_p)
    assert after["time"].is_monotonic_increasing
    assert list(after["request_id"].iloc[50:]) == [f"d2late-{i}" for i in range(10)]
    feedback = read_feedback(tmp_path)
    pd.testing.assert_frame_equal(feedback.iloc[:10].reset_index(drop=True), before_f)
    assert len(feedback) == 12 and feedback.attrs[SKIPPED_LINES] == 0


def test_compacting_twice_merges_into_one_file_per_partition(tmp_path):
    write_day(tmp_path, DAY, 10, tag="a")
    compact_all(tmp_path)
    write_day(tmp_path, DAY + timedelta(hours=1), 10, tag="b")  # a late part in the same (closed) day
    compact_all(tmp_path)
    assert files(tmp_path, "*.parquet") == ["predictions/date=2026-03-10/compacted-000002.parquet"]
    assert Manifest.read(tmp_path / PREDICTIONS / "date=2026-03-10").rows == 20
    assert len(read_predictions(tmp_path)) == 20


def test_open_parts_are_not_compacted(tmp_path):
    with PredictionLog(tmp_path) as log:  # today, written now
        log.write("now", "text", Prediction("x", 0.5), "1", 1.0, 1)
    assert compact(tmp_path, now=datetime.now(UTC), closed_after_s=900) == []
    assert len(files(tmp_path, "*.jsonl")) == 1


def test_shadow_and_failed_rows_and_odd_texts_survive_compaction(tmp_path):
    with PredictionLog(tmp_path, clock=clock(DAY)) as log:
        log.write_batch(["r1"], ["où 💳 \ud800 lone"], [Prediction("x", 0.5)], "1", 2.0, [4])
        log.write_batch(["r1"], ["same"], [Prediction("y", 0.6)], "2", 3.0, [4], slot=SLOT_SHADOW)
        log.write_errors(["r2"], ["boom"], "2", 1.0, SLOT_CANARY, "RuntimeError: boom")
    before = read_predictions(tmp_path, include_shadow=True, include_errors=True)
    compact_all(tmp_path)
    after = read_predictions(tmp_path, include_shadow=True, include_errors=True)
    # a lone surrogate cannot be stored in Parquet (UTF-8): it becomes U+FFFD, nothing else changes
    assert after.loc[0, "text"] == "où 💳 \ufffd lone"
    pd.testing.assert_frame_equal(after.drop(columns="text"), before.drop(columns="text"))
    assert list(read_predictions(tmp_path)["request_id"]) == ["r1"]


# -- crash safety ---------------------------------------------------------------------------------------


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    "step",
    [logstore.STEP_TEMP_WRITTEN, logstore.STEP_RENAMED, logstore.STEP_MANIFEST_WRITTEN, logstore.STEP_CLEANED],
)
def test_a_crash_after_any_step_leaves_every_row_readable_once_and_a_rerun_completes(tmp_path, step):
    write_day(tmp_path, DAY, 20, tag="old", labelled=4)
    compact_all(tmp_path)  # a first generation, so the crash also hits a merge with an old file
    write_day(tmp_path, DAY + timedelta(hours=2), 15, tag="late", labelled=3)
    expected_p, expected_f = read_predictions(tmp_path), read_feedback(tmp_path)
    partition = tmp_path / PREDICTIONS / "date=2026-03-10"

    def crash(at: str) -> None:
        if at == step:
            raise Crash(at)

    with pytest.raises(Crash):
        logstore.compact_partition(partition, PREDICTIONS, now=datetime.now(UTC) + LATER, on_step=crash)
    # what the crash left: reads are exactly once
    pd.testing.assert_frame_equal(read_predictions(tmp_path), expected_p)
    pd.testing.assert_frame_equal(read_feedback(tmp_path), expected_f)
    assert LogCursor(tmp_path).poll()["request_id"].tolist() == expected_p["request_id"].tolist()
    # the rerun finishes the job
    compact_all(tmp_path)
    pd.testing.assert_frame_equal(read_predictions(tmp_path), expected_p)
    assert files(tmp_path, "*.jsonl") == []
    assert [p.name for p in partition.iterdir() if p.name != MANIFEST] == [Manifest.read(partition).file]
    assert Manifest.read(partition).rows == 35


def test_a_half_written_temp_file_is_ignored_and_redone(tmp_path):
    write_day(tmp_path, DAY, 10, tag="a")
    partition = tmp_path / PREDICTIONS / "date=2026-03-10"
    (partition / ".tmp-000001-dead.parquet").write_bytes(b"PAR1 half a file")
    (partition / "compacted-000001.parquet").write_bytes(b"renamed but never in a manifest")
    assert len(read_predictions(tmp_path)) == 10
    compact_all(tmp_path)
    assert sorted(p.name for p in partition.iterdir()) == [MANIFEST, "compacted-000001.parquet"]
    assert read_predictions(tmp_path)["request_id"].tolist() == [f"a-{i}" for i in range(10)]


def test_a_torn_last_line_is_counted_and_left_out_of_the_compacted_file(tmp_path):
    write_day(tmp_path, DAY, 3, tag="a")
    (part,) = (tmp_path / PREDICTIONS).rglob("*.jsonl")
    with open(part, "ab") as f:
        f.write(b'{"request_id":"torn","ti')
    assert read_predictions(tmp_path).attrs[SKIPPED_LINES] == 1
    (result,) = compact_all(tmp_path)
    assert (result.rows, result.skipped) == (3, 1)
    assert read_predictions(tmp_path)["request_id"].tolist() == ["a-0", "a-1", "a-2"]


# -- windows: the cost follows the window -----------------------------------------------------------


def history(root: Path, days: int, per_day: int = 40) -> None:
    """``days`` days ending on DAY, texts repeating across days, 10 labels a day."""
    for back in range(days - 1, -1, -1):
        day = DAY - timedelta(days=back)
        texts = [f"text {(i * 7 + back) % 60}" for i in range(per_day)]
        write_day(root, day, per_day, tag=f"{day:%m%d}", texts=texts, labelled=10, version="1" if back else "2")


@pytest.mark.parametrize("distinct", [True, False])
def test_a_long_history_does_not_change_what_a_window_holds(tmp_path, monkeypatch, distinct):
    short, long = tmp_path / "one-day", tmp_path / "thirty-days"
    history(short, 1)
    history(long, 30)
    for root in (short, long):
        compact_all(root)
    write_day(short, DAY + timedelta(hours=18), 5, tag="fresh", labelled=2, version="2")
    write_day(long, DAY + timedelta(hours=18), 5, tag="fresh", labelled=2, version="2")
    reads: list[Path] = []
    real = logstore._read_partition
    monkeypatch.setattr(logstore, "_read_partition", lambda p, *a, **k: reads.append(p) or real(p, *a, **k))
    one = read_window(short, 30, model_version="2", distinct_texts=distinct)
    thirty = read_window(long, 30, model_version="2", distinct_texts=distinct)
    pd.testing.assert_frame_equal(one, thirty)
    assert len(one) == 30 and one["label"].notna().sum() >= 2
    # one prediction partition of each history (the newest), and feedback from the window's first day on
    assert {p.parent.name for p in reads} == {PREDICTIONS, FEEDBACK}
    assert {p for p in reads if p.parent.name == PREDICTIONS} == {
        root / PREDICTIONS / "date=2026-03-10" for root in (short, long)
    }
    # the same as reading everything and selecting
    everything = read_predictions(long)
    if distinct:
        expected = curation.select_window(everything, "2", 30)
    else:
        expected = everything[everything["model_version"] == "2"].tail(30).reset_index(drop=True)
    expected = logstore.join_feedback(expected, read_feedback(long))
    pd.testing.assert_frame_equal(thirty, expected)


def test_a_window_reaches_back_across_partitions_until_it_is_full(tmp_path):
    history(tmp_path, 5)
    compact_all(tmp_path)
    window = read_window(tmp_path, 100, distinct_texts=False, with_feedback=False)
    assert len(window) == 100 and window["time"].is_monotonic_increasing
    assert window["time"].dt.date.nunique() == 3  # 40 + 40 + 20 rows
    until = read_window(tmp_path, 10, until=DAY - timedelta(days=2), distinct_texts=False)
    assert until["time"].max() < pd.Timestamp(DAY - timedelta(days=2), tz="UTC")


def test_feedback_for_reads_only_the_labels_of_the_rows_asked(tmp_path):
    ids = write_day(tmp_path, DAY, 10, tag="a", labelled=10)
    compact_all(tmp_path)
    got = feedback_for(tmp_path, ids[2:4])
    assert got["request_id"].tolist() == ids[2:4]
    assert feedback_for(tmp_path, []).empty


# -- polls --------------------------------------------------------------------------------------------


def test_cursor_polls_return_only_new_rows_across_compaction(tmp_path):
    start = DAY.replace(tzinfo=UTC)
    cursor = LogCursor(tmp_path, PREDICTIONS, since=start)
    assert cursor.poll().empty
    with PredictionLog(tmp_path, clock=clock(DAY.replace(hour=1))) as log:
        for i in range(5):
            log.write(f"a{i}", "t", Prediction("x", 0.5), "1", 1.0, 1)
        assert cursor.poll()["request_id"].tolist() == [f"a{i}" for i in range(5)]
        assert cursor.poll().empty
        for i in range(3):
            log.write(f"b{i}", "t", Prediction("x", 0.5), "1", 1.0, 1)
        log.flush()
        # the part is compacted with lines the cursor has not read yet
        compact_all(tmp_path)
    assert files(tmp_path, "*.jsonl") == []
    assert cursor.poll()["request_id"].tolist() == ["b0", "b1", "b2"]
    assert cursor.poll().empty
    write_day(tmp_path, DAY, 2, tag="c")  # a new part in the compacted partition
    assert cursor.poll()["request_id"].tolist() == ["c-0", "c-1"]
    compact_all(tmp_path)  # a new generation holds every row again: none comes back
    assert cursor.poll().empty
    assert read_since(tmp_path, start)["request_id"].tolist() == [
        *(f"a{i}" for i in range(5)),
        *(f"b{i}" for i in range(3)),
        "c-0",
        "c-1",
    ]


def test_cursor_reads_only_partitions_from_since_and_rows_after_it(tmp_path):
    write_day(tmp_path, DAY - timedelta(days=3), 5, tag="old")
    write_day(tmp_path, DAY, 5, tag="new")
    rows = LogCursor(tmp_path, PREDICTIONS, since=DAY.replace(hour=12, second=2)).poll()
    assert rows["request_id"].tolist() == ["new-2", "new-3", "new-4"]


def test_live_log_polls_match_a_full_read(tmp_path):
    since = DAY.replace(hour=12, second=5)
    write_day(tmp_path, DAY - timedelta(days=1), 5, tag="old", labelled=5)
    live = LiveLog(tmp_path, since)
    write_day(tmp_path, DAY, 10, tag="a", labelled=4)
    first = live.frame()
    write_day(tmp_path, DAY + timedelta(hours=13), 10, tag="b", labelled=10)
    second = live.frame()
    full = read_predictions(tmp_path, since=since, include_shadow=True, include_errors=True)
    expected = logstore.join_feedback(full, read_feedback(tmp_path))
    assert first["request_id"].tolist() == [f"a-{i}" for i in range(5, 10)]
    pd.testing.assert_frame_equal(second, expected)


def test_label_feed_reads_labels_then_only_their_predictions(tmp_path):
    write_day(tmp_path, DAY - timedelta(days=2), 20, tag="x", labelled=3)
    compact_all(tmp_path)
    feed = LabelFeed(tmp_path)
    preds, feedback = feed.poll()
    assert preds["request_id"].tolist() == ["x-0", "x-1", "x-2"] and len(feedback) == 3
    write_day(tmp_path, DAY, 20, tag="y", labelled=2)
    preds, feedback = feed.poll()
    assert preds["request_id"].tolist() == ["x-0", "x-1", "x-2", "y-0", "y-1"] and len(feedback) == 5
    rows = curation.labelled_rows(preds, feedback, ["intent_b"]).rows
    assert rows["text"].tolist() == ["x text 0", "x text 1", "x text 2", "y text 0", "y text 1"]


def test_label_feed_since_reads_only_later_labels_and_not_the_older_partitions(tmp_path, monkeypatch):
    """A retrain after the champion's cut-off: the labels before it (in the champion's training
    set already) and their days are not read, whatever the history holds."""
    write_day(tmp_path, DAY - timedelta(days=20), 20, tag="old", labelled=10)
    write_day(tmp_path, DAY - timedelta(days=10), 20, tag="mid", labelled=10)
    compact_all(tmp_path)
    write_day(tmp_path, DAY, 20, tag="new", labelled=4)
    read: list[str] = []
    real = logstore._read_partition
    monkeypatch.setattr(
        logstore, "_read_partition", lambda p, kind, where, **kw: read.append(p.name) or real(p, kind, where, **kw)
    )
    cut_off = DAY.replace(tzinfo=UTC) - timedelta(days=1)
    feed = LabelFeed(tmp_path, since=cut_off)
    preds, feedback = feed.poll()
    assert feedback["request_id"].tolist() == [f"new-{i}" for i in range(4)]
    assert preds["request_id"].tolist() == [f"new-{i}" for i in range(4)]
    assert not any(name.startswith(f"date={(DAY - timedelta(days=10)).date()}") for name in read)
    assert not any(name.startswith(f"date={(DAY - timedelta(days=20)).date()}") for name in read)
    assert feed.newest == logstore.utc(feedback["time"].max())
    # the same labels as a full read that keeps only those after the cut-off
    everything = LabelFeed(tmp_path).poll()[1]
    assert everything[everything["time"] >= cut_off]["request_id"].tolist() == feedback["request_id"].tolist()


def test_label_feed_gives_up_on_an_unknown_id_after_the_longest_label_lag(tmp_path, monkeypatch):
    for back in (30, 20, 10):
        write_day(tmp_path, DAY - timedelta(days=back), 5, tag=f"d{back}")
    compact_all(tmp_path)
    ids = write_day(tmp_path, DAY, 5, tag="today")
    with FeedbackLog(tmp_path, clock=clock(DAY.replace(hour=13))) as fb:
        fb.write(ids[0], "intent_b")
        fb.write("no-such-request", "intent_b")
    read: list[str] = []
    real = logstore._read_partition
    monkeypatch.setattr(
        logstore, "_read_partition", lambda p, kind, where, **kw: read.append(p.name) or real(p, kind, where, **kw)
    )
    preds, feedback = LabelFeed(tmp_path, since=DAY, max_lag=timedelta(days=12)).poll()
    assert preds["request_id"].tolist() == [ids[0]] and len(feedback) == 2
    looked_up = set(read)
    assert f"date={(DAY - timedelta(days=10)).date()}" in looked_up
    assert f"date={(DAY - timedelta(days=20)).date()}" not in looked_up
    assert f"date={(DAY - timedelta(days=30)).date()}" not in looked_up
    # a label that came later than the lag after its prediction is not joined
    late = LabelFeed(tmp_path, max_lag=timedelta(days=1))
    with FeedbackLog(tmp_path, clock=clock(DAY.replace(hour=14))) as fb:
        fb.write("d10-0", "intent_b")
    preds, _ = late.poll()
    assert "d10-0" not in set(preds["request_id"])


# -- the writer: a part idle for long is never appended to again ---------------------------------------


def test_an_idle_writer_moves_to_a_new_part(tmp_path):
    ticks = iter([0, 10, 10 + IDLE_ROTATE_S + 1, 10 + IDLE_ROTATE_S + 2])
    start = DAY.replace(tzinfo=UTC).timestamp()
    with PredictionLog(tmp_path, clock=lambda: round((start + next(ticks)) * 10**9)) as log:
        for i in range(4):
            log.write(f"r{i}", "t", Prediction("x", 0.5), "1", 1.0, 1)
    parts = sorted((tmp_path / PREDICTIONS).rglob("*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in parts] == [2, 2]
    assert read_predictions(tmp_path)["request_id"].tolist() == ["r0", "r1", "r2", "r3"]


# -- retention -----------------------------------------------------------------------------------------


def test_retention_keeps_rows_of_versioned_sets_and_their_labels(tmp_path):
    today = DAY.date()
    old = write_day(tmp_path, DAY - timedelta(days=40), 4, tag="old", texts=["Kept  one", "gone", "b", "c"], labelled=4)
    write_day(tmp_path, DAY - timedelta(days=45), 3, tag="older", labelled=3)  # nothing kept: removed
    recent = write_day(tmp_path, DAY - timedelta(days=2), 3, tag="new", labelled=1)
    compact_all(tmp_path)
    results = apply_retention(tmp_path, retention_days=30, keep_texts=["kept one"], today=today)
    assert {(r.kind, r.partition, r.rows_before, r.rows_kept) for r in results} == {
        (PREDICTIONS, f"date={DAY - timedelta(days=40):%Y-%m-%d}", 4, 1),
        (PREDICTIONS, f"date={DAY - timedelta(days=45):%Y-%m-%d}", 3, 0),
        (FEEDBACK, f"date={DAY - timedelta(days=40):%Y-%m-%d}", 4, 1),
        (FEEDBACK, f"date={DAY - timedelta(days=45):%Y-%m-%d}", 3, 0),
    }
    assert read_predictions(tmp_path)["request_id"].tolist() == [old[0], *recent]
    assert read_feedback(tmp_path)["request_id"].tolist() == [old[0], recent[0]]
    assert not (tmp_path / PREDICTIONS / f"date={DAY - timedelta(days=45):%Y-%m-%d}").exists()
    # a second pass changes nothing
    assert apply_retention(tmp_path, retention_days=30, keep_texts=["kept one"], today=today) == []


def test_retention_keeps_old_labels_when_another_run_holds_the_predictions(tmp_path):
    write_day(tmp_path, DAY - timedelta(days=40), 3, tag="old", labelled=3)
    compact_all(tmp_path)
    with logstore._exclusive(tmp_path / PREDICTIONS) as mine:
        assert mine
        assert apply_retention(tmp_path, retention_days=30, keep_texts=[], today=DAY.date()) == []
    assert len(read_predictions(tmp_path)) == 3 and len(read_feedback(tmp_path)) == 3
    # once the predictions can be read, both go (nothing was kept)
    assert {r.kind for r in apply_retention(tmp_path, retention_days=30, keep_texts=[], today=DAY.date())} == {
        PREDICTIONS,
        FEEDBACK,
    }


def test_retention_waits_for_parts_not_compacted_yet(tmp_path):
    write_day(tmp_path, DAY - timedelta(days=40), 3, tag="old")
    assert apply_retention(tmp_path, retention_days=30, keep_texts=[], today=DAY.date()) == []
    assert len(read_predictions(tmp_path)) == 3


def test_the_manifest_is_replaced_atomically(tmp_path):
    Manifest(3, "compacted-000003.parquet", frozenset({"part-1.jsonl"}), 7).write(tmp_path)
    assert Manifest.read(tmp_path) == Manifest(3, "compacted-000003.parquet", frozenset({"part-1.jsonl"}), 7)
    assert sorted(os.listdir(tmp_path)) == [MANIFEST]


# -- fresh parts: a seek by time instead of a read from the start ---------------------------------------


def long_part(root: Path, n: int = 5000) -> Path:
    with PredictionLog(root, clock=clock(DAY, step_s=1)) as log:
        for i in range(n):
            log.write(f"r{i}", f"text number {i} " + "x" * 100, Prediction("x", 0.5), "1", 1.0, 1)
    (part,) = (root / PREDICTIONS).rglob("*.jsonl")
    return part


def test_a_seek_by_time_lands_just_before_the_first_line_at_or_after_it(tmp_path):
    part = long_part(tmp_path)
    since = pd.Timestamp(DAY + timedelta(seconds=3000), tz="UTC")
    at = logstore._seek(part, since)
    data = part.read_bytes()
    assert 0 < at < len(data) and data[at - 1 : at] == b"\n"
    skipped = read_predictions(tmp_path).iloc[: data[:at].count(b"\n")]
    assert skipped["time"].max() < since - pd.Timedelta(seconds=5)  # everything skipped is older
    assert len(data) - at < len(data) // 2  # and most of the file was not read
    assert read_since(tmp_path, since.to_pydatetime())["request_id"].tolist() == [f"r{i}" for i in range(3000, 5000)]


def test_a_window_in_a_fresh_part_reads_its_newest_hour_only(tmp_path, monkeypatch):
    long_part(tmp_path)
    starts: list[int] = []
    real = logstore._read_part
    monkeypatch.setattr(
        logstore, "_read_part", lambda p, start=0, stop=None: starts.append(start) or real(p, start, stop)
    )
    until = DAY + timedelta(seconds=4500)
    window = read_window(tmp_path, 50, until=until, distinct_texts=False, with_feedback=False)
    assert window["request_id"].tolist() == [f"r{i}" for i in range(4450, 4500)]
    assert starts and min(starts) > 0  # read from the newest hour's first line, not the start
    everything = read_window(tmp_path, 10**6, until=until, distinct_texts=False, with_feedback=False)
    assert len(everything) == 4500


def test_a_window_that_cannot_fill_stops_at_since(tmp_path, monkeypatch):
    write_day(tmp_path, DAY - timedelta(days=9), 5, tag="before", version="2")  # an older registry's "2"
    compact_all(tmp_path)
    write_day(tmp_path, DAY - timedelta(days=1), 5, tag="mine", version="2")
    write_day(tmp_path, DAY, 5, tag="now", version="2")
    read: list[str] = []
    real = logstore._read_partition
    monkeypatch.setattr(
        logstore, "_read_partition", lambda p, kind, where, **kw: read.append(p.name) or real(p, kind, where, **kw)
    )
    registered = DAY.replace(tzinfo=UTC) - timedelta(hours=30)
    window = read_window(
        tmp_path, 400, model_version="2", since=registered, until=DAY.replace(hour=23), with_feedback=False
    )
    assert window["request_id"].tolist() == [*(f"mine-{i}" for i in range(5)), *(f"now-{i}" for i in range(5))]
    assert f"date={(DAY - timedelta(days=9)).date()}" not in read
    unbounded = read_window(tmp_path, 400, model_version="2", until=DAY.replace(hour=23), with_feedback=False)
    assert len(unbounded) == 15
