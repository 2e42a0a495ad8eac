"""Reading, compacting and retiring the prediction and feedback logs (pyarrow datasets, Parquet).

The writers (:mod:`driftloop.adapters.predlog`) append JSON Lines; this module is everything
after that. One partition of one log (``<root>/<kind>/date=YYYY-MM-DD/``) holds::

    part-<pid>-<opened>.jsonl     fresh lines, one file per writing process (never rewritten)
    compacted-<gen>.parquet       the partition's closed parts, compacted (one file, sorted by time)
    _manifest.json                which Parquet file is current and which parts it holds
    .tmp-*.parquet                a compaction in progress, or one that crashed: never read

A reader takes the manifest's Parquet file and every JSONL part the manifest does not name, so
compacted and fresh rows are read together, each exactly once. Compaction writes the new
Parquet file to a temp name, fsyncs it, renames it, and only then replaces the manifest (itself
written to a temp file, fsynced and renamed); the JSONL parts and the previous Parquet file are
deleted last. A crash at any step leaves either the old manifest (the new file is ignored and
redone) or the new one (the leftover parts are ignored and deleted by the next run).

Readers go newest partition first and stop when a window is full (:func:`read_window`), join
feedback only for the rows that need it (:func:`feedback_for`), and a poll reads only what
arrived since the previous one (:class:`LogCursor`). Every Parquet row carries its source part
and line (``_part``, ``_line``), the row's identity across compaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from driftloop.adapters.private import open_private, private_dir, write_private
from driftloop.core.types import SLOT_CHAMPION, SLOT_SHADOW
from driftloop.data.dataset import TEXT, normalise

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
# Every row's identity: the JSON Lines part it was written to and the byte offset of its line there.
PART, OFFSET = "_part", "_offset"

MANIFEST = "_manifest.json"
_PARQUET_PREFIX = "compacted-"
_TMP_PREFIX = ".tmp-"
_COLUMNS = {PREDICTIONS: PREDICTION_COLUMNS, FEEDBACK: FEEDBACK_COLUMNS}
_TIME = pa.timestamp("us", tz="UTC")
_SCHEMAS = {
    PREDICTIONS: pa.schema(
        [
            ("request_id", pa.string()),
            ("time", _TIME),
            ("text", pa.string()),
            ("intent", pa.string()),
            ("confidence", pa.float64()),
            ("model_version", pa.string()),
            ("latency_ms", pa.float64()),
            ("tokens", pa.int64()),
            ("slot", pa.string()),
            ("error", pa.string()),
            (PART, pa.string()),
            (OFFSET, pa.int64()),
        ]
    ),
    FEEDBACK: pa.schema(
        [
            ("request_id", pa.string()),
            ("time", _TIME),
            ("label", pa.string()),
            (PART, pa.string()),
            (OFFSET, pa.int64()),
        ]
    ),
}
# Rows per Parquet row group: small enough that a time filter skips most of a day by statistics.
_ROW_GROUP = 65_536
# The offset a cursor keeps for a part whose every row it has taken.
_DONE = 2**62
# A seek by time in a JSON Lines part starts this much earlier: lines are stamped before the
# writer's lock, so two threads may write theirs a few microseconds out of order.
_SEEK_MARGIN = pd.Timedelta(seconds=5)
# The seek stops bisecting once the range is this small, and reads it.
_SEEK_SPAN = 1 << 16
# read_window reads a partition's newest hour first, then as far back as the rows found say it
# needs (_next_span), then all of it.
_FIRST_SPAN = pd.Timedelta(hours=1)
# A reader that keeps meeting a compaction mid-read tries this often before it gives up.
_READ_ATTEMPTS = 20


# -- partitions and manifests -----------------------------------------------------------------------


def utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    """``moment`` as a UTC timestamp (naive means UTC)."""
    ts = pd.Timestamp(moment)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def partitions(directory: Path, first: date | None = None, last: date | None = None) -> list[tuple[date, Path]]:
    """The ``date=`` partitions of one log between ``first`` and ``last`` (inclusive), oldest first."""
    if not directory.is_dir():
        return []
    out = []
    for part in directory.glob("date=*"):
        try:
            day = date.fromisoformat(part.name.removeprefix("date="))
        except ValueError:
            continue  # not one of ours
        if (first is None or day >= first) and (last is None or day <= last):
            out.append((day, part))
    return sorted(out)


class LogSource(Protocol):
    """Where a reader's partitions come from. A local folder is read where it is; a remote store
    (:class:`driftloop.adapters.logremote.RemoteLog`) mirrors into a local cache folder only the
    partitions a read touches, and only the objects the read needs, right before it reads them."""

    @property
    def immutable_parts(self) -> bool:
        """Every JSONL part is complete once seen (shipped objects): a cursor that read one to its
        end never opens it again."""
        ...

    def partitions(self, kind: str, first: date | None, last: date | None) -> list[tuple[date, Path]]:
        """The ``date=`` partitions of one log (their local folders), oldest first."""
        ...

    def sync(self, partition: Path, since: pd.Timestamp | None) -> None:
        """Make the local folder a consistent copy of the partition (every row at or after
        ``since`` at least)."""
        ...


class LogStore(LogSource, Protocol):
    """A log store that compacts and retires its own partitions (a remote one)."""

    def compact(self, *, now: datetime, closed_after_s: float, grace_s: float) -> list[CompactionResult]: ...

    def apply_retention(
        self, *, cutoff: date, keep: set[str], on_step: Callable[[str], None]
    ) -> list[RetentionResult]: ...


# What the readers, compaction and retention take: a local folder (the embedded default) or a store.
LogRoot = Path | LogStore


@dataclass(frozen=True)
class _LocalSource:
    root: Path
    immutable_parts: bool = False

    def partitions(self, kind: str, first: date | None, last: date | None) -> list[tuple[date, Path]]:
        return partitions(self.root / kind, first, last)

    def sync(self, partition: Path, since: pd.Timestamp | None) -> None:
        return None


def _source(log_root: LogRoot | str) -> LogSource:
    if isinstance(log_root, (str, os.PathLike)):
        return _LocalSource(Path(log_root))
    return log_root


@dataclass(frozen=True)
class Manifest:
    """What compaction made of one partition: the current Parquet file (None: no rows) and every
    JSON Lines part whose rows it holds (readers skip those parts)."""

    generation: int = 0
    file: str | None = None
    parts: frozenset[str] = frozenset()
    rows: int = 0

    @classmethod
    def read(cls, partition: Path) -> Manifest:
        try:
            return cls.from_bytes((partition / MANIFEST).read_bytes())
        except FileNotFoundError:
            return cls()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        return cls(int(raw["generation"]), raw["file"], frozenset(raw["parts"]), int(raw["rows"]))

    def to_bytes(self) -> bytes:
        body = {"generation": self.generation, "file": self.file, "parts": sorted(self.parts), "rows": self.rows}
        return json.dumps(body, indent=1).encode()

    def write(self, partition: Path) -> None:
        """Replace the partition's manifest atomically (temp file, fsync, rename, fsync the folder)."""
        _write_durably(partition / MANIFEST, self.to_bytes())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    write_private(path, data)  # temp file (0600), fsync, rename, fsync the folder


def _jsonl_parts(partition: Path, manifest: Manifest) -> list[Path]:
    return sorted(p for p in partition.glob("part-*.jsonl") if p.name not in manifest.parts)


# -- JSON Lines parts ---------------------------------------------------------------------------------


@dataclass
class _PartRead:
    records: list[dict]
    offsets: list[int]  # byte offset of each record's line
    end: int  # byte offset after the last complete line
    skipped: int
    truncated: bool  # bytes after the last newline (a line being written, or torn by a crash)


def _read_part(path: Path, start: int = 0, stop: int | None = None) -> _PartRead:
    """The complete lines of one part from byte ``start`` (a line start) on, up to ``stop`` (a line
    start) when given."""
    with open(path, "rb") as f:
        if start:
            f.seek(start)
        data = f.read() if stop is None else f.read(max(stop - start, 0))
    end = data.rfind(b"\n") + 1
    body = data[:end]
    # Where each line starts: one pass in C over the bytes.
    newlines = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == 10)
    starts = np.concatenate(([0], newlines[:-1] + 1)) if len(newlines) else newlines
    parsed = None
    if body:
        try:
            # Writers escape every newline inside a value, so the lines joined by commas are one
            # JSON array: one parse call, about twice as fast as a call per line.
            parsed = json.loads(b"[" + body[:-1].replace(b"\n", b",") + b"]")
        except ValueError:
            parsed = None
    if parsed is not None and len(parsed) == len(starts) and all(isinstance(r, dict) for r in parsed):
        return _PartRead(parsed, (starts + start).tolist(), start + end, 0, end < len(data))
    records: list[dict] = []
    offsets = []
    skipped = 0
    for number, (line, at) in enumerate(zip(body.split(b"\n"), starts.tolist(), strict=False)):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
            offsets.append(start + at)
        else:
            skipped += 1
            log.warning("%s: line %d from byte %d: skipped a line that is not a JSON object", path, number + 1, start)
    return _PartRead(records, offsets, start + end, skipped, end < len(data))


def _line_time(f: BinaryIO, position: int, size: int) -> tuple[int, datetime | None]:
    """The first line starting at or after ``position``: its offset, and its time (None when no
    complete line starts there, or it has no readable time)."""
    if position > 0:
        f.seek(position - 1)
        skip = b""
        while b"\n" not in skip:
            chunk = f.read(_SEEK_SPAN)
            if not chunk:
                return size, None
            skip += chunk
        position = position - 1 + skip.index(b"\n") + 1
    f.seek(position)
    line = f.readline()
    if not line.endswith(b"\n"):
        return position, None
    try:
        return position, datetime.fromisoformat(json.loads(line)["time"])
    except (ValueError, KeyError, TypeError):
        return position, None


def _seek(path: Path, since: pd.Timestamp) -> int:
    """A line start in ``path`` before which every line is older than ``since`` (less a margin):
    a bisection on the lines' times, which each writer appends in order."""
    target = (since - _SEEK_MARGIN).to_pydatetime()
    size = path.stat().st_size
    lo, hi = 0, size
    with open(path, "rb") as f:
        while hi - lo > _SEEK_SPAN:
            mid = (lo + hi) // 2
            at, stamp = _line_time(f, mid, size)
            if stamp is None or at >= hi or stamp >= target:
                hi = mid
            else:
                lo = at
    return lo


def _empty(kind: str) -> pd.DataFrame:
    return _normalised(pd.DataFrame({c: [] for c in (*_COLUMNS[kind], PART, OFFSET)}), kind)


def _normalised(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The one shape both sources are read into: the kind's columns, then ``_part`` and ``_offset``."""
    frame = frame.reindex(columns=[*_COLUMNS[kind], PART, OFFSET])
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601").astype("datetime64[ns, UTC]")
    frame[OFFSET] = frame[OFFSET].astype("int64")
    if kind == PREDICTIONS:
        frame["slot"] = frame["slot"].fillna(SLOT_CHAMPION).astype(str)
        frame["error"] = frame["error"].fillna("").astype(str)
        frame = frame.astype({"confidence": "float64", "latency_ms": "float64"})
        frame["tokens"] = frame["tokens"].fillna(0).astype("int64")
    return frame


def _part_frame(path: Path, kind: str, read: _PartRead) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(read.records, columns=list(_COLUMNS[kind]))
    frame[PART] = path.name
    frame[OFFSET] = read.offsets
    return _normalised(frame, kind)


# -- Parquet files ------------------------------------------------------------------------------------


def _to_arrow(frame: pd.DataFrame, kind: str) -> pa.Table:
    try:
        return pa.Table.from_pandas(frame, schema=_SCHEMAS[kind], preserve_index=False)
    except (UnicodeEncodeError, pa.ArrowInvalid):
        # A lone surrogate (valid in JSON, not in UTF-8) cannot be stored; it becomes U+FFFD.
        fixed = frame.copy()
        for column in fixed.columns:
            if fixed[column].dtype == object:
                fixed[column] = fixed[column].map(_valid_utf8)
        return pa.Table.from_pandas(fixed, schema=_SCHEMAS[kind], preserve_index=False)


def _valid_utf8(value: object) -> object:
    if not isinstance(value, str):
        return value
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _read_parquet(path: Path, kind: str, expression: pads.Expression | None = None) -> pd.DataFrame:
    table = pads.dataset(str(path), format="parquet", schema=_SCHEMAS[kind]).to_table(filter=expression)
    return _normalised(table.to_pandas(), kind)


# -- one consistent read of a partition ---------------------------------------------------------------


@dataclass(frozen=True)
class _Filter:
    """A row filter applied by pyarrow to Parquet files and by pandas to fresh JSONL rows."""

    since: pd.Timestamp | None = None
    until: pd.Timestamp | None = None
    model_version: str | None = None
    slot: str | None = None
    include_shadow: bool = True
    include_errors: bool = True
    request_ids: frozenset[str] | None = None

    def expression(self) -> pads.Expression | None:
        terms = []
        if self.since is not None:
            terms.append(pads.field("time") >= pa.scalar(self.since.to_pydatetime(), type=_TIME))
        if self.until is not None:
            terms.append(pads.field("time") < pa.scalar(self.until.to_pydatetime(), type=_TIME))
        if self.model_version is not None:
            terms.append(pads.field("model_version") == str(self.model_version))
        if self.slot is not None:
            terms.append(pads.field("slot") == self.slot)
        if not self.include_shadow:
            terms.append(pads.field("slot") != SLOT_SHADOW)
        if not self.include_errors:
            terms.append(pads.field("error") == "")
        if self.request_ids is not None:
            terms.append(pads.field("request_id").isin(sorted(self.request_ids)))
        out: pads.Expression | None = None
        for term in terms:
            out = term if out is None else out & term
        return out

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        keep = pd.Series(True, index=frame.index)
        if self.since is not None:
            keep &= frame["time"] >= self.since
        if self.until is not None:
            keep &= frame["time"] < self.until
        if self.model_version is not None:
            keep &= frame["model_version"].astype(str) == str(self.model_version)
        if self.slot is not None:
            keep &= frame["slot"] == self.slot
        if not self.include_shadow:
            keep &= frame["slot"] != SLOT_SHADOW
        if not self.include_errors:
            keep &= frame["error"] == ""
        if self.request_ids is not None:
            keep &= frame["request_id"].isin(self.request_ids)
        return frame[keep]


@dataclass
class _Parsed:
    """What one bounded read has parsed of a partition so far, so that reading further back
    parses only the older rows: per JSONL part, the offset read from and every row from there;
    per Parquet file, the time read from and the rows that passed the filter. Rows carry their
    normalised text (``_norm``), computed once."""

    jsonl: dict[str, tuple[int, pd.DataFrame]] = field(default_factory=dict)
    parquet: dict[str, tuple[pd.Timestamp | None, pd.DataFrame]] = field(default_factory=dict)


_NORM = "_norm"


def _with_norm(frame: pd.DataFrame) -> pd.DataFrame:
    frame[_NORM] = normalise(frame[TEXT]) if len(frame) else pd.Series(dtype=object)
    return frame


def _parquet_rows(path: Path, kind: str, where: _Filter, parsed: _Parsed | None) -> pd.DataFrame:
    if parsed is None:
        return _read_parquet(path, kind, where.expression())
    got = parsed.parquet.get(path.name)
    if got is None or (got[0] is not None and (where.since is None or where.since < got[0])):
        # Only the rows older than those read before (time ranges pushed down to pyarrow).
        upper = got[0] if got is not None else None
        bound = upper if where.until is None or (upper is not None and upper < where.until) else where.until
        older = _with_norm(_read_parquet(path, kind, replace(where, until=bound).expression()))
        rows = older if got is None else pd.concat([older, got[1]], ignore_index=True)
        parsed.parquet[path.name] = (where.since, rows)
    return where.apply(parsed.parquet[path.name][1])


def _jsonl_rows(path: Path, kind: str, where: _Filter, parsed: _Parsed | None) -> tuple[pd.DataFrame, _PartRead]:
    start = _seek(path, where.since) if where.since is not None else 0
    got = parsed.jsonl.get(path.name) if parsed is not None else None
    if got is not None and start >= got[0]:
        return where.apply(got[1]), _PartRead([], [], got[0], 0, False)
    read = _read_part(path, start, got[0] if got is not None else None)
    frame = _part_frame(path, kind, read)
    if parsed is not None:
        frame = _with_norm(frame)
        if got is not None:
            frame = pd.concat([frame, got[1]], ignore_index=True)
        parsed.jsonl[path.name] = (start, frame)
    return where.apply(frame), read


def _read_partition(
    partition: Path,
    kind: str,
    where: _Filter,
    *,
    parsed: _Parsed | None = None,
    count_truncated: bool = True,
    source: LogSource | None = None,
) -> pd.DataFrame:
    """Every row of one partition that passes ``where``: the manifest's Parquet file plus the JSONL
    parts it does not name, as one snapshot (a compaction that lands mid-read makes it read again).
    With ``parsed``, what an earlier call with a later ``where.since`` parsed is reused."""
    for _ in range(_READ_ATTEMPTS):
        if source is not None:
            source.sync(partition, where.since)
        manifest = Manifest.read(partition)
        frames: list[pd.DataFrame] = []
        skipped = 0
        try:
            if manifest.file is not None:
                frames.append(_parquet_rows(partition / manifest.file, kind, where, parsed))
            for path in _jsonl_parts(partition, manifest):
                frame, read = _jsonl_rows(path, kind, where, parsed)
                skipped += read.skipped
                if read.truncated and count_truncated:
                    # A line without its newline: the writer crashed mid-write (or is writing it now).
                    skipped += 1
                    log.warning("%s: skipped a truncated last line", path)
                frames.append(frame)
        except FileNotFoundError:
            continue  # a compaction deleted what the old manifest named: read the new state
        if Manifest.read(partition) == manifest:
            frames = [f for f in frames if len(f)]
            frame = pd.concat(frames, ignore_index=True) if frames else _empty(kind)
            frame.attrs[SKIPPED_LINES] = skipped
            return frame
    raise RuntimeError(f"{partition}: the manifest kept changing while it was read")


def _concat(frames: list[pd.DataFrame], kind: str) -> pd.DataFrame:
    skipped = sum(f.attrs.get(SKIPPED_LINES, 0) for f in frames)
    frames = [f for f in frames if len(f)]
    frame = pd.concat(frames, ignore_index=True) if frames else _empty(kind)
    frame = frame.sort_values(["time", PART, OFFSET], kind="stable").reset_index(drop=True)
    frame.attrs[SKIPPED_LINES] = skipped
    return frame


def _public(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    skipped = frame.attrs.get(SKIPPED_LINES, 0)
    out = frame[list(_COLUMNS[kind])].reset_index(drop=True)
    out.attrs[SKIPPED_LINES] = skipped
    return out


def _read_all(root: LogRoot, kind: str, where: _Filter) -> pd.DataFrame:
    first = where.since.date() if where.since is not None else None
    last = where.until.date() if where.until is not None else None
    src = _source(root)
    return _concat([_read_partition(p, kind, where, source=src) for _, p in src.partitions(kind, first, last)], kind)


# -- readers: everything -----------------------------------------------------------------------------


def read_predictions(
    root: LogRoot, since: datetime | None = None, *, include_shadow: bool = False, include_errors: bool = False
) -> pd.DataFrame:
    """Every logged prediction (at or after ``since``, if given; naive means UTC), oldest first.

    For callers that want everything (the CLI, tests); the loop reads windows
    (:func:`read_window`) and polls (:class:`LogCursor`). By default only the answers users got:
    shadow predictions (a challenger's mirrored answers, which share the request id of the
    champion's) and failed predictions are left out; the rollout analysis asks for them. Columns
    are :data:`PREDICTION_COLUMNS`, ``time`` as UTC timestamps, ``slot`` "champion" and ``error``
    "" on lines written before those existed. Lines that cannot be read (a truncated last line
    after a crash) are skipped; their number is in ``frame.attrs["skipped_lines"]``.
    """
    where = _Filter(
        since=utc(since) if since is not None else None, include_shadow=include_shadow, include_errors=include_errors
    )
    return _public(_read_all(root, PREDICTIONS, where), PREDICTIONS)


def read_feedback(root: LogRoot) -> pd.DataFrame:
    """Every feedback label, oldest first; columns :data:`FEEDBACK_COLUMNS` (see
    :func:`read_predictions` for skipped lines)."""
    return _public(_read_all(root, FEEDBACK, _Filter()), FEEDBACK)


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


# -- readers: bounded by the window ------------------------------------------------------------------


def read_window(
    log_root: LogRoot,
    rows: int,
    *,
    until: datetime | None = None,
    since: datetime | None = None,
    distinct_texts: bool = True,
    model_version: str | None = None,
    slot: str | None = None,
    include_shadow: bool = False,
    include_errors: bool = False,
    with_feedback: bool = True,
) -> pd.DataFrame:
    """The newest ``rows`` predictions before ``until`` (now when None), oldest first.

    Partitions are read newest first and the read stops once the window is full, so its cost
    follows the window, not the history. ``distinct_texts`` counts a repeated text once, keeping
    its newest answer (:func:`driftloop.data.curation.select_window`); ``model_version`` and
    ``slot`` keep only that model's answers in that slot (pushed down to Parquet as filters).
    With ``with_feedback`` the rows carry a ``label`` column (:func:`feedback_for`, only their
    request ids). The frame is the one :func:`read_predictions` followed by the same selection
    would give. ``since`` (e.g. when ``model_version`` was registered) bounds a window that
    cannot fill: partitions more than a day older (writers' clocks) are not read.
    """
    where = _Filter(
        until=utc(until) if until is not None else None,
        model_version=model_version,
        slot=slot,
        include_shadow=include_shadow,
        include_errors=include_errors,
    )
    last = where.until.date() if where.until is not None else None
    first = utc(since).date() - timedelta(days=1) if since is not None else None
    newest = where.until if where.until is not None else utc(datetime.now(UTC))
    newer: list[pd.DataFrame] = []  # partitions read whole
    window = _empty(PREDICTIONS)
    src = _source(log_root)
    for day, partition in reversed(src.partitions(PREDICTIONS, first, last)):
        start = pd.Timestamp(day, tz="UTC")
        end = min(newest, start + pd.Timedelta(days=1))
        # The partition's newest hour first, then more: every row at or after the cutoff is read
        # (Parquet by a pushed-down filter, JSONL parts from the line the cutoff falls on), so a
        # window full of them is the window.
        span: pd.Timedelta | None = _FIRST_SPAN
        parsed = _Parsed()
        while True:
            cutoff = end - span if span is not None else None
            if cutoff is not None and cutoff <= start:
                cutoff = None
            current = _read_partition(partition, PREDICTIONS, replace(where, since=cutoff), parsed=parsed, source=src)
            window = _select(_concat([*newer, current], PREDICTIONS), rows, model_version, distinct_texts)
            if len(window) >= rows or cutoff is None or span is None:
                break
            span = _next_span(span, len(window), rows)
        if len(window) >= rows:
            break
        newer.append(current)
    out = _public(window, PREDICTIONS)
    if with_feedback:
        since = out["time"].min() if len(out) else None
        out = join_feedback(out, feedback_for(log_root, out["request_id"], since=since))
    return out


def _next_span(span: pd.Timedelta, have: int, rows: int) -> pd.Timedelta | None:
    """How far back to read next: the span that the rows found so far say would fill the window,
    with room to spare (at least twice, at most sixteen times the last); None: the whole day."""
    growth = 16.0 if have == 0 else min(16.0, max(2.0, 1.5 * rows / have))
    longer = span * growth
    return None if longer >= pd.Timedelta(hours=20) else longer


def _select(frame: pd.DataFrame, rows: int, model_version: str | None, distinct_texts: bool) -> pd.DataFrame:
    """:func:`driftloop.data.curation.select_window`'s selection (a unit test holds them equal),
    on the normalised texts computed once per row."""
    if not distinct_texts:
        return frame.tail(max(rows, 0))
    skipped = frame.attrs.get(SKIPPED_LINES, 0)
    if model_version is not None:
        frame = frame[frame["model_version"].astype(str) == str(model_version)]
    frame = frame.sort_values("time", kind="stable")
    norm = frame[_NORM] if _NORM in frame.columns else pd.Series(float("nan"), index=frame.index)
    missing = norm.isna()
    if missing.any():
        norm = norm.where(~missing, normalise(frame[TEXT]))
    selected = frame.loc[~norm.duplicated(keep="last")].tail(rows).reset_index(drop=True)
    selected.attrs[SKIPPED_LINES] = skipped
    return selected


def feedback_for(
    log_root: LogRoot, request_ids: Iterable[str], *, since: datetime | pd.Timestamp | None = None
) -> pd.DataFrame:
    """The feedback rows of these requests only, oldest first (:data:`FEEDBACK_COLUMNS`).

    A label is sent after its prediction, so ``since`` (the oldest prediction's time, when the
    caller knows it) bounds the partitions read; the ids are pushed down to Parquet as a filter.
    """
    ids = frozenset(str(i) for i in request_ids)
    if not ids:
        return _public(_empty(FEEDBACK), FEEDBACK)
    # A day earlier: the writers' clocks may disagree a little across midnight.
    first = utc(since).date() - timedelta(days=1) if since is not None and not pd.isna(since) else None
    where = _Filter(request_ids=ids)
    src = _source(log_root)
    frames = [_read_partition(p, FEEDBACK, where, source=src) for _, p in src.partitions(FEEDBACK, first, None)]
    return _public(_concat(frames, FEEDBACK), FEEDBACK)


def predictions_for(
    log_root: LogRoot,
    request_ids: Iterable[str],
    *,
    until: datetime | pd.Timestamp | None = None,
    since: datetime | pd.Timestamp | None = None,
) -> pd.DataFrame:
    """The answered predictions of these requests (no shadow, no failed ones), oldest first.

    A prediction comes before its label, so partitions are read newest first from ``until`` (the
    newest label's time) and the read stops once every id is found; ``since`` (the oldest label's
    time less the longest wait for a label, ``logs.label_max_lag_days``) is where it gives up on
    ids it has not found, so an unknown id costs that span, not the whole history."""
    wanted = {str(i) for i in request_ids}
    if not wanted:
        return _public(_empty(PREDICTIONS), PREDICTIONS)
    # A day either side: the writers' clocks may disagree a little across midnight.
    last = utc(until).date() + timedelta(days=1) if until is not None and not pd.isna(until) else None
    first = utc(since).date() - timedelta(days=1) if since is not None and not pd.isna(since) else None
    frames: list[pd.DataFrame] = []
    missing = set(wanted)
    src = _source(log_root)
    for _, partition in reversed(src.partitions(PREDICTIONS, first, last)):
        where = _Filter(include_shadow=False, include_errors=False, request_ids=frozenset(missing))
        frame = _read_partition(partition, PREDICTIONS, where, source=src)
        frames.append(frame)
        missing -= set(frame["request_id"])
        if not missing:
            break
    return _public(_concat(frames, PREDICTIONS), PREDICTIONS)


@dataclass
class LogCursor:
    """Where the previous poll of one log stopped: a poll returns only the rows written since.

    Fresh JSONL parts are read from the byte offset where the previous poll stopped (complete
    lines only: a line being written is read whole by the next poll), and a part seen for the
    first time from the line ``since`` falls on (a bisection on its lines' times); a Parquet file
    is read once, without the rows the cursor already took from the parts it compacted (by their
    ``_offset``). Only partitions from ``since``'s date on are looked at, and rows before
    ``since`` are left out.
    """

    log_root: LogRoot
    kind: str = PREDICTIONS
    since: datetime | None = None
    offsets: dict[str, int] = field(default_factory=dict)  # part -> byte offset read up to
    parquet_seen: set[str] = field(default_factory=set)  # "<partition>/<file>"

    def poll(self) -> pd.DataFrame:
        """The rows written since the previous poll (every row at or after ``since`` on the first
        one); oldest first, the kind's columns."""
        since = utc(self.since) if self.since is not None else None
        where = _Filter(since=since)
        frames: list[pd.DataFrame] = []
        src = _source(self.log_root)
        for _, partition in src.partitions(self.kind, since.date() if since is not None else None, None):
            frames.append(self._poll_partition(partition, where, src))
        return _public(_concat(frames, self.kind), self.kind)

    def _poll_partition(self, partition: Path, where: _Filter, src: LogSource) -> pd.DataFrame:
        for _ in range(_READ_ATTEMPTS):
            src.sync(partition, where.since)
            manifest = Manifest.read(partition)
            offsets = dict(self.offsets)
            frames: list[pd.DataFrame] = []
            key = f"{partition.name}/{manifest.file}"
            try:
                if manifest.file is not None and key not in self.parquet_seen:
                    frame = _read_parquet(partition / manifest.file, self.kind, where.expression())
                    frames.append(self._unseen(frame))
                    # Every row of these parts is in the file now, and has been taken: the parts
                    # are done, and a later generation's copies of their rows are left out.
                    for part in manifest.parts:
                        offsets[part] = _DONE
                for path in _jsonl_parts(partition, manifest):
                    start = offsets.get(path.name)
                    if start is None:
                        start = _seek(path, where.since) if where.since is not None else 0
                    elif start == _DONE:
                        continue
                    read = _read_part(path, start)
                    # A shipped object never grows: once read to its end it is never opened again
                    # (at the end of a busy day a partition holds thousands of them).
                    offsets[path.name] = _DONE if src.immutable_parts else read.end
                    frames.append(where.apply(_part_frame(path, self.kind, read)))
            except FileNotFoundError:
                continue
            if Manifest.read(partition) == manifest:
                self.offsets = offsets
                if manifest.file is not None:
                    self.parquet_seen.add(key)
                return _concat(frames, self.kind)
        raise RuntimeError(f"{partition}: the manifest kept changing while it was polled")

    def _unseen(self, frame: pd.DataFrame) -> pd.DataFrame:
        if not self.offsets or frame.empty:
            return frame
        taken = frame[PART].map(lambda p: self.offsets.get(p, 0))
        return frame[frame[OFFSET] >= taken]


def read_since(log_root: LogRoot, since_time: datetime, *, kind: str = PREDICTIONS) -> pd.DataFrame:
    """Every row of one log at or after ``since_time`` (only its partitions are read), oldest first;
    for polls, keep a :class:`LogCursor` instead."""
    return LogCursor(log_root, kind, since_time).poll()


# Labels may be stamped a little before the prediction they label when two machines' clocks disagree.
_CLOCK_SKEW = timedelta(minutes=5)


class LiveLog:
    """Every prediction since ``since`` (shadow and failed ones too) with its feedback label,
    kept up to date by polls: each :meth:`frame` reads only the lines written since the previous
    one, from both logs, and joins the labels in memory."""

    def __init__(self, log_root: LogRoot, since: datetime):
        self._predictions = LogCursor(log_root, PREDICTIONS, since)
        self._feedback = LogCursor(log_root, FEEDBACK, utc(since) - _CLOCK_SKEW)
        self._preds = _public(_empty(PREDICTIONS), PREDICTIONS)
        self._labels = _public(_empty(FEEDBACK), FEEDBACK)

    def frame(self) -> pd.DataFrame:
        """The predictions so far (:data:`PREDICTION_COLUMNS` and ``label``), oldest first."""
        self._preds = _append(self._preds, self._predictions.poll())
        self._labels = _append(self._labels, self._feedback.poll())
        return join_feedback(self._preds, self._labels)


# How long after its prediction a label may arrive and still be joined to it, by default
# (``logs.label_max_lag_days``): a label older than its prediction by more is kept in the log but
# not trained on.
LABEL_MAX_LAG = timedelta(days=7)


class LabelFeed:
    """Feedback labels and the predictions they label, kept up to date by polls: each
    :meth:`poll` reads only the labels posted since the previous one, then only the predictions
    of request ids not seen yet (newest partitions first, :func:`predictions_for`, at most
    ``max_lag`` before the label).

    ``since``: the first poll reads labels posted from then on only (a retrain passes the
    champion's ``data.labels_until``, less a few minutes for clocks that disagree: the labels
    before it are in the champion's training set already); None reads every label the log still
    holds (``logs.retention_days``)."""

    def __init__(self, log_root: LogRoot, since: datetime | None = None, max_lag: timedelta = LABEL_MAX_LAG):
        self.log_root: LogRoot = Path(log_root) if isinstance(log_root, (str, os.PathLike)) else log_root
        self.max_lag = max_lag
        self._cursor = LogCursor(self.log_root, FEEDBACK, utc(since) - _CLOCK_SKEW if since is not None else None)
        self.feedback = _public(_empty(FEEDBACK), FEEDBACK)
        self.predictions = _public(_empty(PREDICTIONS), PREDICTIONS)

    @property
    def newest(self) -> pd.Timestamp | None:
        """The newest label's time read so far (None before the first label)."""
        return None if self.feedback.empty else utc(self.feedback["time"].max())

    def poll(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The predictions that have labels, and every label so far (oldest first)."""
        new = self._cursor.poll()
        if len(new):
            self.feedback = _append(self.feedback, new)
            missing = set(new["request_id"]) - set(self.predictions["request_id"])
            found = predictions_for(
                self.log_root, missing, until=new["time"].max(), since=new["time"].min() - self.max_lag
            )
            self.predictions = _append(self.predictions, found)
        return self.predictions, self.feedback


def _append(frame: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    if new.empty:
        return frame
    if frame.empty:
        return new.reset_index(drop=True)
    return pd.concat([frame, new], ignore_index=True)


# -- compaction ---------------------------------------------------------------------------------------

# The steps of one partition's compaction, in order; ``on_step`` hears each name (tests crash there).
STEP_TEMP_WRITTEN = "temp-written"
STEP_RENAMED = "renamed"
STEP_MANIFEST_WRITTEN = "manifest-written"
STEP_CLEANED = "cleaned"


@dataclass(frozen=True)
class CompactionResult:
    """What one compaction of one partition did."""

    kind: str
    partition: str
    parts: int  # JSONL parts compacted
    rows: int  # rows in the partition's Parquet file now
    skipped: int  # unreadable lines left out (a torn last line)
    file: str | None


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[bool]:
    """One compaction or retention at a time per log (a lock file; False when another holds it)."""
    private_dir(directory)
    with os.fdopen(open_private(directory / ".compaction.lock", os.O_WRONLY | os.O_CREAT), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _locked_logs(log_root: Path, action: str, skipped: list[str]) -> Iterator[tuple[str, Path]]:
    """Each log that exists (predictions, then feedback), under its compaction lock. A log whose
    lock another run holds is skipped with a warning and its kind appended to ``skipped``."""
    for kind in (PREDICTIONS, FEEDBACK):
        directory = Path(log_root) / kind
        if not directory.is_dir():
            continue
        with _exclusive(directory) as mine:
            if not mine:
                log.warning("another compaction holds %s; %s skipped it", directory, action)
                skipped.append(kind)
                continue
            yield kind, directory


def _clean(partition: Path, manifest: Manifest) -> None:
    """Finish what a crashed run left: parts the manifest holds, Parquet files it does not name,
    temp files. None of them is ever read."""
    removed = False
    for path in partition.iterdir():
        name = path.name
        stale = (
            (name.startswith("part-") and name in manifest.parts)
            or (name.startswith(_PARQUET_PREFIX) and name != manifest.file)
            or name.startswith(_TMP_PREFIX)
        )
        if stale:
            path.unlink(missing_ok=True)
            removed = True
    if removed:
        _fsync_dir(partition)


def write_parquet(frame: pd.DataFrame, kind: str, path: Path) -> None:
    """``frame`` as one compacted Parquet file (sorted by time, zstd, row groups of 64k rows), fsynced."""
    frame = frame.sort_values(["time", PART, OFFSET], kind="stable")
    table = _to_arrow(frame, kind)
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
        pq.write_table(table, f, row_group_size=_ROW_GROUP, compression="zstd")
        f.flush()
        os.fsync(f.fileno())


def read_parts(paths: Iterable[Path], kind: str) -> tuple[list[pd.DataFrame], int]:
    """Every complete line of these JSONL parts, one frame per part, and the lines left out (a torn
    last line, lines that are not JSON objects)."""
    frames, skipped = [], 0
    for path in paths:
        read = _read_part(path)
        skipped += read.skipped + int(read.truncated)
        if read.truncated:
            log.warning("%s: a torn last line is left out of the compacted file", path)
        frames.append(_part_frame(path, kind, read))
    return frames, skipped


def read_parquet(path: Path, kind: str) -> pd.DataFrame:
    """Every row of one compacted Parquet file (with ``_part`` and ``_offset``)."""
    return _read_parquet(path, kind)


def _replace(
    partition: Path,
    kind: str,
    manifest: Manifest,
    frame: pd.DataFrame,
    parts: frozenset[str],
    on_step: Callable[[str], None],
) -> Manifest:
    """Write ``frame`` as the partition's next Parquet generation and make it current: temp file,
    fsync, rename, manifest, then the parts and the previous file go."""
    generation = manifest.generation + 1
    name: str | None = None
    if len(frame):
        tmp = partition / f"{_TMP_PREFIX}{generation:06d}-{uuid.uuid4().hex}.parquet"
        write_parquet(frame, kind, tmp)
        on_step(STEP_TEMP_WRITTEN)
        name = f"{_PARQUET_PREFIX}{generation:06d}.parquet"
        os.replace(tmp, partition / name)
        _fsync_dir(partition)
        on_step(STEP_RENAMED)
    new = Manifest(generation, name, parts, len(frame))
    new.write(partition)
    on_step(STEP_MANIFEST_WRITTEN)
    _clean(partition, new)
    on_step(STEP_CLEANED)
    return new


def _is_closed(path: Path, day: date, now: datetime, closed_after_s: float, grace_s: float) -> bool:
    age = now.timestamp() - path.stat().st_mtime
    return age >= closed_after_s or (day < now.date() and age >= grace_s)


def compact_partition(
    partition: Path,
    kind: str,
    *,
    now: datetime | None = None,
    closed_after_s: float = 900.0,
    grace_s: float = 60.0,
    on_step: Callable[[str], None] | None = None,
) -> CompactionResult:
    """Compact the partition's closed JSONL parts (and its Parquet file, if any) into one Parquet file.

    A part is closed when it was not written for ``closed_after_s`` (writers move to a new part
    after :data:`driftloop.adapters.predlog.IDLE_ROTATE_S` idle, so nothing appends to it again),
    or when its partition is an earlier UTC day and ``grace_s`` passed since its last write.
    Crash-safe at every step (see the module's docstring); a rerun finishes or redoes the work.
    """
    now = now or datetime.now(UTC)
    step = on_step or (lambda _: None)
    day = date.fromisoformat(partition.name.removeprefix("date="))
    manifest = Manifest.read(partition)
    _clean(partition, manifest)
    closed = [p for p in _jsonl_parts(partition, manifest) if _is_closed(p, day, now, closed_after_s, grace_s)]
    if not closed:
        return CompactionResult(kind, partition.name, 0, manifest.rows, 0, manifest.file)
    frames = [_read_parquet(partition / manifest.file, kind)] if manifest.file else []
    part_frames, skipped = read_parts(closed, kind)
    frame = pd.concat([*frames, *part_frames], ignore_index=True)
    new = _replace(partition, kind, manifest, frame, manifest.parts | {p.name for p in closed}, step)
    log.info("compacted %d parts of %s/%s into %s (%d rows)", len(closed), kind, partition.name, new.file, new.rows)
    return CompactionResult(kind, partition.name, len(closed), new.rows, skipped, new.file)


def compact(
    log_root: LogRoot, *, now: datetime | None = None, closed_after_s: float = 900.0, grace_s: float = 60.0
) -> list[CompactionResult]:
    """Compact every partition of both logs that has closed parts (:func:`compact_partition`)."""
    now = now or datetime.now(UTC)
    if not isinstance(log_root, (str, os.PathLike)):
        return log_root.compact(now=now, closed_after_s=closed_after_s, grace_s=grace_s)
    results = []
    for kind, directory in _locked_logs(log_root, "compaction", []):
        for _, partition in partitions(directory):
            result = compact_partition(partition, kind, now=now, closed_after_s=closed_after_s, grace_s=grace_s)
            if result.parts:
                results.append(result)
    return results


# -- retention ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionResult:
    """What one retention pass did to one partition."""

    kind: str
    partition: str
    rows_before: int
    rows_kept: int


def apply_retention(
    log_root: LogRoot,
    *,
    retention_days: int,
    keep_texts: Iterable[str],
    today: date | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[RetentionResult]:
    """Delete the rows of partitions older than ``retention_days``, except predictions whose text
    is in ``keep_texts`` (compared normalised: the texts of the versioned training and reference
    sets) and the feedback labels of the predictions kept.

    Only compacted partitions are touched (a partition with JSONL parts left waits for the next
    compaction); each rewrite is crash-safe like a compaction's. A partition left with no row is
    removed."""
    today = today or datetime.now(UTC).date()
    cutoff = today - timedelta(days=retention_days)
    keep = set(normalise(pd.Series(list(keep_texts), dtype=str)))
    step = on_step or (lambda _: None)
    if not isinstance(log_root, (str, os.PathLike)):
        return log_root.apply_retention(cutoff=cutoff, keep=keep, on_step=step)
    results: list[RetentionResult] = []
    kept_ids: set[str] = set()
    skipped: list[str] = []
    for kind, directory in _locked_logs(log_root, "retention", skipped):
        if kind == FEEDBACK and PREDICTIONS in skipped:
            # Which labels to keep follows from the predictions kept: without that pass, none is known.
            log.warning("retention skipped the predictions; the labels in %s wait for the next pass", directory)
            continue
        for _, partition in partitions(directory, None, cutoff - timedelta(days=1)):
            manifest = Manifest.read(partition)
            _clean(partition, manifest)
            if _jsonl_parts(partition, manifest):
                log.warning("%s has parts not compacted yet; retention waits for them", partition)
                continue
            frame = _read_parquet(partition / manifest.file, kind) if manifest.file else _empty(kind)
            kept = retained_rows(frame, kind, keep, kept_ids)
            if len(kept) < len(frame):
                _replace(partition, kind, manifest, kept, manifest.parts, step)
                results.append(RetentionResult(kind, partition.name, len(frame), len(kept)))
            if kept.empty:
                _remove_partition(partition)
    return results


def retained_rows(frame: pd.DataFrame, kind: str, keep: set[str], kept_ids: set[str]) -> pd.DataFrame:
    """The rows retention keeps: predictions whose normalised text is in ``keep`` (their request ids
    are added to ``kept_ids``), labels of the request ids in ``kept_ids``."""
    if kind == PREDICTIONS:
        kept = frame[normalise(frame[TEXT]).isin(keep)] if len(frame) else frame
        kept_ids |= set(kept["request_id"])
        return kept
    return frame[frame["request_id"].isin(kept_ids)]


def _remove_partition(partition: Path) -> None:
    """Remove a partition that holds no row any more (its manifest names no file and no part is left)."""
    if any(p.name.startswith(("part-", _PARQUET_PREFIX)) for p in partition.iterdir()):
        return
    (partition / MANIFEST).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        partition.rmdir()
