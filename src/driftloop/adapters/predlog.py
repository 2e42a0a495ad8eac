"""The append-only prediction log and feedback log: the writers.

Layout, one JSON object per line, partitioned by UTC date::

    <root>/predictions/date=YYYY-MM-DD/part-<pid>-<opened>.jsonl
    <root>/feedback/date=YYYY-MM-DD/part-<pid>-<opened>.jsonl

Every writing process owns its own files (pid and the time it opened the file are in the name),
so replicas and restarts never interleave lines in one file, and a file is never rewritten. A
writer moves to a new file at midnight UTC and after :data:`IDLE_ROTATE_S` without a line, so a
part that has not grown for longer is closed for good and may be compacted. Reading, compaction
to Parquet and retention are :mod:`driftloop.adapters.logstore`'s; its readers are re-exported
here for the callers that have always imported them from this module.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from driftloop.adapters.logremote import RemoteLog, Shipper
from driftloop.adapters.logstore import (
    FEEDBACK,
    FEEDBACK_COLUMNS,
    PREDICTION_COLUMNS,
    PREDICTIONS,
    SKIPPED_LINES,
    LogCursor,
    LogRoot,
    feedback_for,
    join_feedback,
    predictions_for,
    read_feedback,
    read_predictions,
    read_since,
    read_window,
)
from driftloop.adapters.private import open_private, private_dir
from driftloop.core.types import SLOT_CHAMPION, Prediction

__all__ = [
    "FEEDBACK",
    "FEEDBACK_COLUMNS",
    "IDLE_ROTATE_S",
    "PREDICTIONS",
    "PREDICTION_COLUMNS",
    "SKIPPED_LINES",
    "FeedbackLog",
    "LogCursor",
    "PredictionLog",
    "feedback_for",
    "join_feedback",
    "predictions_for",
    "read_feedback",
    "read_predictions",
    "read_since",
    "read_window",
]

log = logging.getLogger(__name__)

# A writer idle this long moves to a new part on its next line: compaction treats a part unchanged
# for longer (logs.closed_after_s, at least twice this) as closed for good.
IDLE_ROTATE_S = 300.0
_DAY_S = 86400
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND
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
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._fd = -1
        self._path: Path | None = None
        self._day_end = 0.0  # epoch second at which the open file's date ends
        self._last = 0.0  # epoch second of the last line written
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
            if now >= self._day_end or now < self._day_end - _DAY_S or now - self._last >= IDLE_ROTATE_S:
                self._open_for(now)
            self._last = now
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

    def retire(self) -> Path | None:
        """Rotate the open part out (the next line opens a new one); the part's path, or None when
        none is open. For a shipper, off the request path: the part is complete when this returns."""
        with self._lock:
            if self._fd < 0 or self._path is None:
                return None
            self._retired.append(self._fd)
            self._fd = -1
            self._day_end = 0.0  # the next append opens a new part
            return self._path

    def _open_for(self, now: float) -> None:
        day_start = int(now // _DAY_S) * _DAY_S
        day = datetime.fromtimestamp(day_start, UTC).date()
        partition = self.directory / f"date={day.isoformat()}"
        new_dirs = [d for d in (self.directory.parent, self.directory, partition) if not d.exists()]
        private_dir(partition)  # 0700 folders, 0600 parts: the lines hold user text
        # A new file each time, named by this process and the (real) time it is opened: a part
        # that compaction took is never appended to again.
        opened = time.time_ns() // 1000
        while True:
            stamp = f"{datetime.fromtimestamp(opened // 10**6, UTC):%Y%m%dT%H%M%S}{opened % 10**6:06d}Z"
            path = partition / f"part-{os.getpid()}-{stamp}.jsonl"
            try:
                fd = open_private(path, _OPEN_FLAGS | os.O_EXCL)
                break
            except FileExistsError:
                opened += 1
        self._path = path
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

    def __init__(
        self,
        root: LogRoot,
        fsync_interval_s: float = 1.0,
        *,
        clock: Callable[[], int] = time.time_ns,
        redact: Callable[[str], str] | None = None,
    ):
        """``root``: the log folder, or a :class:`~driftloop.adapters.logremote.RemoteLog` (the lines
        go to its local spool folder, and a shipper thread uploads the parts). ``clock`` gives
        epoch nanoseconds; another clock is for tests and replays. ``redact`` (a
        :class:`driftloop.core.redaction.Redactor`, ``privacy.redact``) is applied to every user
        text, label and error message before the line is formatted: what it replaces never
        reaches a file."""
        self._redact = redact
        self._shipper: Shipper | None = None
        if isinstance(root, RemoteLog):
            self.root = root.spool
            self._out = _PartitionedAppender(self.root / self._kind, fsync_interval_s)
            self._shipper = root.shipper(self._kind, self._out.retire, lambda: self._out.path)
        else:
            self.root = Path(root)  # type: ignore[arg-type]  # a str is fine too
            self._out = _PartitionedAppender(self.root / self._kind, fsync_interval_s)
        self._clock = _Clock(clock)

    @property
    def path(self) -> Path | None:
        return self._out.path

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        last = self._out.path
        self._out.close()
        if self._shipper is not None:
            # No line comes after close: the last part goes now (a pod's spool may not outlive it).
            self._shipper.close(also=last)

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
        if self._redact is not None:
            texts = [self._redact(t) for t in texts]
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
        if self._redact is not None:
            texts = [self._redact(t) for t in texts]
            error = self._redact(error)  # an exception's message may quote the text
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
        if self._redact is not None:
            label = self._redact(label)  # a label is free text (a new intent's name)
        now, stamp = self._clock.now()
        line = f'{{"request_id":{_q(request_id)},"time":"{stamp}","label":{_q(label)}}}\n'
        self._out.append(line.encode("ascii"), now)
