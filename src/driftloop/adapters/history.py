"""The champion history and the retrain-trigger ledger: append-only records of every alias move
and of every drift window that started a retrain.

Each is an interface with two backends, chosen by ``history.backend`` (:mod:`driftloop.adapters.wiring`):

- ``file`` (the embedded default): JSON Lines under the state dir, :class:`FileChampionHistory`
  and :class:`FileTriggerLedger`. Each record is one ``os.write`` on an ``O_APPEND`` descriptor
  followed by ``fsync``: concurrent writers never interleave within a line, and a record that
  returned is on disk. Readers skip a torn last line (a crash mid-write) instead of failing.
- ``postgres`` (the stack, Kubernetes): two tables that every replica and flow run reaches,
  :mod:`driftloop.adapters.history_pg`.

The one ledger operation that decides is :meth:`TriggerLedger.claim_window`: the caller's check
(the pure :func:`driftloop.core.policy.should_retrain`) runs on the ledger's records under an
exclusive lock, and a positive answer is recorded before the lock is released. Of several monitors
racing on one window exactly one wins, and the cooldown holds between monitors racing on two
windows. The file backend locks with ``fcntl.flock`` on the ledger file (one machine, or a shared
filesystem that supports it, as NFSv4 does).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from driftloop.core.policy import TriggerRecord
from driftloop.core.types import HistoryEntry, RetrainDecision

# The check a claim runs under the ledger's lock: (every record so far, the time now) -> decision;
# core.policy.should_retrain with the drift result and the policies bound (functools.partial).
RetrainCheck = Callable[[list[TriggerRecord], datetime], RetrainDecision]


class ChampionHistory(Protocol):
    """Every alias move: when, from which version to which, why, by whom, with what evidence."""

    def append(self, entry: HistoryEntry) -> HistoryEntry:
        """Add ``entry`` at the end (one write, durable when this returns); returns it."""
        ...

    def entries(self) -> list[HistoryEntry]:
        """Every entry, oldest first."""
        ...

    def last_good(self, alias: str = "champion", exclude: str | None = None) -> str | None:
        """The rollback target: see :func:`last_good`."""
        ...


class TriggerLedger(Protocol):
    """Which drift windows already started a retrain (deduplication and cooldown)."""

    def records(self) -> list[TriggerRecord]:
        """Every trigger, oldest first."""
        ...

    def record(self, window_id: str, reason: str, run: str = "") -> bool:
        """Record ``window_id`` as triggered, unconditionally but once: False when it already was."""
        ...

    def claim_window(self, window_id: str, check: RetrainCheck, *, run: str = "") -> RetrainDecision:
        """Atomically: ``check`` the records, and when it says retrain, record ``window_id`` with
        the decision's reason and ``run``. Returns the decision; of several callers racing on one
        window, at most one gets ``retrain=True``."""
        ...


def last_good(entries: Iterable[HistoryEntry], alias: str = "champion", exclude: str | None = None) -> str | None:
    """The version that held ``alias`` most recently, other than ``exclude`` and never one that
    was rolled back from (the rollback target)."""
    moves = [e for e in entries if e.alias == alias]
    bad = {e.from_version for e in moves if e.action == "rollback"}
    for entry in reversed(moves):
        if entry.to_version and entry.to_version != exclude and entry.to_version not in bad:
            return entry.to_version
    return None


def already_claimed(window_id: str) -> RetrainDecision:
    """The answer to a claim of a window that is already in the ledger."""
    return RetrainDecision(False, f"window {window_id[:12]} already triggered a retrain")


def now_iso() -> str:
    """The time now, as the history records it (UTC, ISO 8601, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------- JSON Lines files


def _write(fd: int, record: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
    os.fsync(fd)


def _open_private(path: Path) -> int:
    """An append descriptor of ``path``: a new folder is created 700 and a new file 600 (the
    history says who may serve; other users of the machine may neither read nor write it); a file
    left 644 by an older version is tightened when this user owns it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except PermissionError:  # another user's file: leave its mode to its owner
        pass
    return fd


def _append(path: Path, record: dict[str, Any]) -> None:
    fd = _open_private(path)
    try:
        _write(fd, record)
    finally:
        os.close(fd)


@contextmanager
def _exclusive(path: Path) -> Iterator[int]:
    """An append descriptor of ``path`` that holds an exclusive ``flock`` until the block ends."""
    fd = _open_private(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing the only descriptor of this open file releases its lock


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn final line from a crash
    return out


class FileChampionHistory:
    """The champion history as a JSON Lines file (``history.backend: file``)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, entry: HistoryEntry) -> HistoryEntry:
        """Add ``entry`` as one line (written and fsynced when this returns); returns it."""
        _append(self.path, asdict(entry))
        return entry

    def entries(self) -> list[HistoryEntry]:
        """Every entry, in the order they were appended."""
        return [HistoryEntry(**rec) for rec in _read(self.path)]

    def last_good(self, alias: str = "champion", exclude: str | None = None) -> str | None:
        """The rollback target: see :func:`last_good`."""
        return last_good(self.entries(), alias, exclude)


class FileTriggerLedger:
    """The trigger ledger as a JSON Lines file (``history.backend: file``); writes hold an
    exclusive ``flock`` on it, so a claim's read, check and append are one step."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[TriggerRecord]:
        """Every trigger, in the order they were recorded."""
        return [TriggerRecord(r["window_id"], datetime.fromisoformat(r["time"])) for r in _read(self.path)]

    def record(self, window_id: str, reason: str, run: str = "") -> bool:
        """Record ``window_id`` unless it is there already (False then)."""
        with _exclusive(self.path) as fd:
            if any(r.window_id == window_id for r in self.records()):
                return False
            _write(fd, {"window_id": window_id, "time": now_iso(), "reason": reason, "run": run})
        return True

    def claim_window(self, window_id: str, check: RetrainCheck, *, run: str = "") -> RetrainDecision:
        """``check`` the records and record a positive answer, under the file's exclusive lock."""
        with _exclusive(self.path) as fd:
            records = self.records()
            now = datetime.now(UTC)
            decision = check(records, now)
            if not decision.retrain:
                return decision
            if any(r.window_id == window_id for r in records):  # a check that ignores the window
                return already_claimed(window_id)
            time = now.isoformat(timespec="milliseconds")
            _write(fd, {"window_id": window_id, "time": time, "reason": decision.reason, "run": run})
        return decision
