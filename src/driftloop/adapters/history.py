"""Append-only JSON Lines records: the champion history and the retrain-trigger ledger.

Each record is one ``os.write`` on an ``O_APPEND`` descriptor followed by ``fsync``: concurrent
writers never interleave within a line, and a record that returned is on disk. Readers skip a
torn last line (a crash mid-write) instead of failing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from driftloop.core.policy import TriggerRecord
from driftloop.core.types import HistoryEntry


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> list[dict]:
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


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ChampionHistory:
    """Every alias move: when, from which version to which, why, by whom, with what evidence."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, entry: HistoryEntry) -> HistoryEntry:
        _append(self.path, asdict(entry))
        return entry

    def entries(self) -> list[HistoryEntry]:
        return [HistoryEntry(**rec) for rec in _read(self.path)]

    def last_good(self, alias: str = "champion", exclude: str | None = None) -> str | None:
        """The version that held ``alias`` most recently, other than ``exclude`` and never one
        that was rolled back from (the rollback target)."""
        entries = [e for e in self.entries() if e.alias == alias]
        bad = {e.from_version for e in entries if e.action == "rollback"}
        for entry in reversed(entries):
            if entry.to_version and entry.to_version != exclude and entry.to_version not in bad:
                return entry.to_version
        return None


class TriggerLedger:
    """Which drift windows already started a retrain (deduplication and cooldown)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[TriggerRecord]:
        return [TriggerRecord(r["window_id"], datetime.fromisoformat(r["time"])) for r in _read(self.path)]

    def record(self, window_id: str, reason: str, run: str = "") -> None:
        _append(self.path, {"window_id": window_id, "time": now_iso(), "reason": reason, "run": run})
