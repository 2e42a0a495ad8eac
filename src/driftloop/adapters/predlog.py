"""The append-only prediction log and feedback log, and their readers.

Layout, one JSON object per line, partitioned by UTC date::

    <root>/predictions/date=YYYY-MM-DD/part-<pid>-<start-ts>.jsonl
    <root>/feedback/date=YYYY-MM-DD/part-<pid>-<start-ts>.jsonl

Every writing process owns its own files (pid and start time are in the name), so replicas and
restarts never interleave lines in one file, and a file is never rewritten. The monitor reads
whole partitions; nothing here needs a database.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Self

import pandas as pd

from driftloop.core.types import SLOT_CHAMPION, SLOT_SHADOW, Prediction

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
PREDICTION_COLUMNS = (
    "request_id",
    "time",
    "text",
    "intent",
    "confidence",
    "model_version",
    "latency_ms",
    "tokens",
    "slot",
    "error",
)
FEEDBACK_COLUMNS = ("request_id", "time", "label")
# Readers put the number of unreadable lines they skipped here, in ``frame.attrs``.
SKIPPED_LINES = "skipped_lines"

_DAY_S = 86400
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
# json.dumps of a str is a direct call into the C escaper; ensure_ascii keeps lone surrogates
# (valid in JSON text, unencodable as UTF-8) from ever failing a write.
_q = json.dumps


class _PartitionedAppender:
    """Appends byte lines to today's file of one log, and fsyncs them in a background thread.

    Writers only take an uncontended lock around ``os.write``; ``fsync`` runs on the thread, on
    fds that writers never close (a rotated-out fd is handed to the thread, which syncs and
    closes it), so a slow disk never stalls a request.
    """

    def __init__(self, directory: Path, fsync_interval_s: float):
        if fsync_interval_s <= 0:
            raise ValueError(f"fsync_interval_s must be positive, got {fsync_interval_s}")
        self.directory = Path(directory)
        self.fsync_interval_s = float(fsync_interval_s)
        started = datetime.now(UTC)
        self._file_name = f"part-{os.getpid()}-{started:%Y%m%dT%H%M%S%fZ}.jsonl"
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._fd = -1
        self._path: Path | None = None
        self._day_end = 0.0  # epoch second at which the open file's date ends
        self._dirty = False
        self._partial = False
        self._retired: list[int] = []
        self._new_entries: list[Path] = []  # directories whose new entries still need an fsync
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sync_loop, name=f"fsync-{self.directory.name}", daemon=True)
        self._thread.start()

    @property
    def path(self) -> Path | None:
        """The file being written now (None before the first line)."""
        with self._lock:
            return self._path if self._fd >= 0 else None

    def append(self, data: bytes, now: float) -> None:
        """Write complete lines stamped ``now`` (epoch seconds) in one ``os.write``."""
        with self._lock:
            if self._closed:
                raise ValueError(f"log {self.directory} is closed")
            if now >= self._day_end or now < self._day_end - _DAY_S:
                self._open_for(now)
            if self._partial:
                data = b"\n" + data  # end the partial line a failed write left, so it stays alone
            try:
                written = os.write(self._fd, data)
                while written < len(data):  # a short write (a full disk, a signal): finish it
                    written += os.write(self._fd, data[written:])
            except OSError:
                self._partial = True
                raise
            self._partial = False
            # After the write, so the sync thread cannot clear the flag between the two.
            self._dirty = True

    def _open_for(self, now: float) -> None:
        day_start = int(now // _DAY_S) * _DAY_S
        day = datetime.fromtimestamp(day_start, UTC).date()
        partition = self.directory / f"date={day.isoformat()}"
        new_dirs = [d for d in (self.directory.parent, self.directory, partition) if not d.exists()]
        partition.mkdir(parents=True, exist_ok=True)
        self._path = partition / self._file_name
        fd = os.open(self._path, _OPEN_FLAGS, 0o644)
        if self._fd >= 0:
            self._retired.append(self._fd)
        self._fd = fd
        self._day_end = float(day_start + _DAY_S)
        # The new file's directory entry (and any new directory's) must reach the disk too.
        self._new_entries.extend([partition] + [d.parent for d in new_dirs])

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval_s):
            self._sync()

    def _sync(self) -> None:
        # One sync at a time: a concurrent one could close a retired fd this one still syncs.
        with self._sync_lock:
            with self._lock:
                fd, dirty = self._fd, self._dirty
                self._dirty = False
                retired, self._retired = self._retired, []
                entries, self._new_entries = self._new_entries, []
            for old in retired:
                self._fsync(old, "a rotated-out file")
                os.close(old)
            if dirty and fd >= 0:
                self._fsync(fd, "the current file")
            for directory in dict.fromkeys(entries):
                try:
                    dir_fd = os.open(directory, os.O_RDONLY)
                except OSError:
                    log.exception("cannot open %s to fsync it", directory)
                    continue
                self._fsync(dir_fd, str(directory))
                os.close(dir_fd)

    def _fsync(self, fd: int, what: str) -> None:
        try:
            os.fsync(fd)
        except OSError:
            log.exception("fsync of %s in %s failed", what, self.directory)

    def flush(self) -> None:
        """fsync now (the thread does it every ``fsync_interval_s`` anyway)."""
        self._sync()

    def close(self) -> None:
        """Stop the thread, fsync and close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._thread.join()
        self._sync()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class _Clock:
    """ISO-8601 UTC timestamps at a fraction of ``datetime.isoformat``'s cost (which is most of a
    log write): the date-and-seconds prefix is formatted once per second."""

    __slots__ = ("_prefix", "_second", "_time_ns")

    def __init__(self, time_ns: Callable[[], int] = time.time_ns) -> None:
        self._second = -1
        self._prefix = ""
        self._time_ns = time_ns

    def now(self) -> tuple[float, str]:
        """Epoch seconds and the same instant as ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``."""
        ns = self._time_ns()
        second, micro = divmod(ns // 1000, 1_000_000)
        if second != self._second:
            # Two threads may both refresh at a second boundary; each writes a correct pair.
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return ns / 1e9, f"{self._prefix}.{micro:06d}+00:00"


class _AppendOnlyLog:
    """One append-only, date-partitioned JSON Lines log under ``root/<kind>/``."""

    _kind = ""

    def __init__(self, root: Path, fsync_interval_s: float = 1.0, *, clock: Callable[[], int] = time.time_ns):
        """``clock`` gives epoch nanoseconds; another clock is for tests and replays."""
        self.root = Path(root)
        self._out = _PartitionedAppender(self.root / self._kind, fsync_interval_s)
        self._clock = _Clock(clock)

    @property
    def path(self) -> Path | None:
        return self._out.path

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PredictionLog(_AppendOnlyLog):
    """Append-only log of every prediction served.

    Durability: each call is one ``os.write`` on an ``O_APPEND`` file, with no buffering in this
    process, so once it returns the lines are in the kernel and survive a crash or SIGKILL of
    the server. A background thread fsyncs every ``fsync_interval_s``, so a crash of the whole
    machine (power loss, kernel panic) loses at most the last ``fsync_interval_s`` seconds of
    lines (plus the time of one fsync), and may leave a truncated last line, which the readers
    skip and count.

    Thread-safe; a write costs a few microseconds (formatting plus one syscall).
    """

    _kind = PREDICTIONS

    def write(
        self,
        request_id: str,
        text: str,
        prediction: Prediction,
        model_version: str,
        latency_ms: float,
        tokens: int,
        slot: str = SLOT_CHAMPION,
    ) -> None:
        self.write_batch([request_id], [text], [prediction], model_version, latency_ms, [tokens], slot)

    def write_batch(
        self,
        request_ids: Sequence[str],
        texts: Sequence[str],
        predictions: Sequence[Prediction],
        model_version: str,
        latency_ms: float,
        tokens: Sequence[int],
        slot: str = SLOT_CHAMPION,
    ) -> None:
        """One request's predictions, written together (one syscall, one timestamp).

        ``slot`` says which part of a rollout answered (champion, canary, or shadow: the
        challenger's mirrored answer to a request the champion answered, same request id)."""
        if not (len(request_ids) == len(texts) == len(predictions) == len(tokens)):
            raise ValueError("request_ids, texts, predictions and tokens must have one entry per text")
        now, stamp = self._clock.now()
        # Formatted by hand: a dict through json.dumps costs several times more per line.
        tail = f',"model_version":{_q(model_version)},"latency_ms":{float(latency_ms):.3f},"slot":{_q(slot)},"tokens":'
        lines = [
            f'{{"request_id":{_q(rid)},"time":"{stamp}","text":{_q(text)},"intent":{_q(p.intent)},'
            f'"confidence":{float(p.confidence)!r}{tail}{int(n)}}}\n'
            for rid, text, p, n in zip(request_ids, texts, predictions, tokens, strict=True)
        ]
        self._out.append("".join(lines).encode("ascii"), now)

    def write_errors(
        self,
        request_ids: Sequence[str],
        texts: Sequence[str],
        model_version: str,
        latency_ms: float,
        slot: str,
        error: str,
    ) -> None:
        """Predictions a model failed to make: no intent, the error's message. Readers leave them
        out unless asked (the rollout analysis counts them against the model that failed)."""
        if len(request_ids) != len(texts):
            raise ValueError("request_ids and texts must have one entry per text")
        now, stamp = self._clock.now()
        tail = (
            f',"intent":null,"confidence":null,"model_version":{_q(model_version)},'
            f'"latency_ms":{float(latency_ms):.3f},"slot":{_q(slot)},"tokens":0,'
            f'"error":{_q(error[:500] or "error")}}}\n'
        )
        lines = [
            f'{{"request_id":{_q(rid)},"time":"{stamp}","text":{_q(text)}{tail}'
            for rid, text in zip(request_ids, texts, strict=True)
        ]
        self._out.append("".join(lines).encode("ascii"), now)


class FeedbackLog(_AppendOnlyLog):
    """Append-only log of ground-truth labels sent back for served requests.

    The same durability as :class:`PredictionLog`. A label may name an intent the model does not
    know: that is how new intents reach the next training set.
    """

    _kind = FEEDBACK

    def write(self, request_id: str, label: str) -> None:
        now, stamp = self._clock.now()
        line = f'{{"request_id":{_q(request_id)},"time":"{stamp}","label":{_q(label)}}}\n'
        self._out.append(line.encode("ascii"), now)


# -- readers ------------------------------------------------------------------------------------


def _partitions(directory: Path, since: datetime | None) -> list[Path]:
    if not directory.is_dir():
        return []
    first: date | None = None
    if since is not None:
        first = (since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)).date()
    out = []
    for part in sorted(directory.glob("date=*")):
        try:
            day = date.fromisoformat(part.name.removeprefix("date="))
        except ValueError:
            continue  # not one of ours
        if first is None or day >= first:
            out.append(part)
    return out


def _read_lines(files: list[Path]) -> tuple[list[dict], int]:
    records: list[dict] = []
    skipped = 0
    for path in files:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A line without its newline: the writer crashed mid-write (or is writing it now).
            skipped += 1
            log.warning("%s: skipped a truncated last line (%d bytes)", path, len(data) - end)
        body = data[:end]
        try:
            # Writers escape every newline inside a value, so the lines joined by commas are one
            # JSON array: one parse call, about twice as fast as a call per line.
            parsed = json.loads(b"[" + body[:-1].replace(b"\n", b",") + b"]") if body else []
        except ValueError:
            parsed = None
        if parsed is not None and all(isinstance(r, dict) for r in parsed):
            records.extend(parsed)
            continue
        for number, line in enumerate(body.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                skipped += 1
                log.warning("%s:%d: skipped a line that is not a JSON object", path, number)
    return records, skipped


def _frame(directory: Path, columns: tuple[str, ...], since: datetime | None) -> pd.DataFrame:
    files = [f for part in _partitions(directory, since) for f in sorted(part.glob("*.jsonl"))]
    records, skipped = _read_lines(files)
    frame = pd.DataFrame.from_records(records, columns=list(columns))
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    if since is not None:
        cutoff = pd.Timestamp(since)
        cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
        frame = frame[frame["time"] >= cutoff]
    frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
    frame.attrs[SKIPPED_LINES] = skipped
    return frame


def read_predictions(
    root: Path, since: datetime | None = None, *, include_shadow: bool = False, include_errors: bool = False
) -> pd.DataFrame:
    """Every logged prediction (at or after ``since``, if given; naive means UTC), oldest first.

    By default only the answers users got: shadow predictions (a challenger's mirrored answers,
    which share the request id of the champion's) and failed predictions are left out; the
    rollout analysis asks for them. Columns are :data:`PREDICTION_COLUMNS`, ``time`` as UTC
    timestamps, ``slot`` "champion" and ``error`` "" on lines written before those existed.
    Lines that cannot be read (a truncated last line after a crash) are skipped; their number is
    in ``frame.attrs["skipped_lines"]``.
    """
    frame = _frame(Path(root) / PREDICTIONS, PREDICTION_COLUMNS, since)
    skipped = frame.attrs[SKIPPED_LINES]
    frame["slot"] = frame["slot"].fillna(SLOT_CHAMPION).astype(str)
    frame["error"] = frame["error"].fillna("").astype(str)
    if not include_shadow:
        frame = frame[frame["slot"] != SLOT_SHADOW]
    if not include_errors:
        frame = frame[frame["error"] == ""]
    frame = frame.astype({"confidence": "float64", "latency_ms": "float64", "tokens": "int64"})
    frame = frame.reset_index(drop=True)
    frame.attrs[SKIPPED_LINES] = skipped
    return frame


def read_feedback(root: Path) -> pd.DataFrame:
    """Every feedback label, oldest first; columns :data:`FEEDBACK_COLUMNS` (see
    :func:`read_predictions` for skipped lines)."""
    return _frame(Path(root) / FEEDBACK, FEEDBACK_COLUMNS, None)


def join_feedback(preds: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """``preds`` with a ``label`` column: the latest feedback label for each request_id, or None.

    Rows and their order are those of ``preds``; a label for an unknown request_id is dropped.
    """
    latest = (
        feedback.sort_values("time", kind="stable")
        .drop_duplicates("request_id", keep="last")
        .set_index("request_id")["label"]
    )
    out = preds.drop(columns=["label"], errors="ignore").copy()
    labels = out["request_id"].map(latest)
    out["label"] = labels.astype(object).where(labels.notna(), None)
    return out
