"""One /metrics for several serving processes on one port (``driftloop serve --workers N``).

A scrape lands on whichever worker accepts it, so each must answer for all of them, as
prometheus_client's multiprocess mode does for gunicorn, without its cost on the hot path (a
lock and an mmap write per observation) or its stale label sets (a cleared info gauge stays in
its file). Each worker keeps its series in its own registry, in memory, and writes them every
:data:`INTERVAL_S` (and right before it answers a scrape) to ``<dir>/<pid>.json``; a scrape sums
every worker's counters and histograms and takes the highest value of each gauge over the
workers alive (every worker converges to the same routing, so the info gauges agree once they
have polled).

When a worker exits, the supervisor renames its file ``dead-<pid>.json``: its counters and
histograms stay in the sums (a restarted worker starts from zero, so the totals never go back,
which Prometheus would read as a counter reset), its gauges are dropped. Sibling workers' counts
are at most :data:`INTERVAL_S` old; the answering worker's own are exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
DEAD_PREFIX = "dead-"
_SUMMED = {"counter", "histogram", "summary"}


def snapshot(registry: CollectorRegistry) -> list[dict[str, Any]]:
    """Every family of ``registry`` with its samples, as JSON-ready values."""
    return [
        {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
        for family in registry.collect()
    ]


def write_snapshot(registry: CollectorRegistry, directory: Path, pid: int | None = None) -> None:
    """Replace this process's file in ``directory`` with ``registry``'s samples (atomically)."""
    pid = os.getpid() if pid is None else pid
    target = directory / f"{pid}.json"
    tmp = directory / f".{pid}.json.tmp"
    tmp.write_text(json.dumps(snapshot(registry)))
    os.replace(tmp, target)


def mark_dead(directory: Path, pid: int) -> None:
    """Keep an exited worker's counts in the sums, and drop its gauges (the supervisor calls it)."""
    with contextlib.suppress(FileNotFoundError):  # it never wrote one
        os.replace(directory / f"{pid}.json", directory / f"{DEAD_PREFIX}{pid}.json")


def _read(directory: Path) -> Iterator[tuple[bool, list[dict[str, Any]]]]:
    """(alive, families) of every worker's file."""
    for path in sorted(directory.glob("*.json")):
        try:
            families = json.loads(path.read_text())
        except (OSError, ValueError):  # replaced or removed while listed
            continue
        yield not path.name.startswith(DEAD_PREFIX), families


def merge(snapshots: Iterable[tuple[bool, list[dict[str, Any]]]]) -> list[Metric]:
    """The families of all ``snapshots`` (alive, families) as one: counters, histograms and
    summaries summed (their ``_created`` the earliest), gauges the highest of the live ones."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for alive, families in snapshots:
        for family in families:
            kind = family["type"]
            summed = kind in _SUMMED
            if not summed and not alive:
                continue
            name = family["name"]
            if name not in merged:
                merged[name] = Metric(name, family["help"], kind)
                values[name] = {}
            by_sample = values[name]
            for sample_name, labels, value in family["samples"]:
                key = (sample_name, tuple(sorted(labels.items())))
                old = by_sample.get(key)
                if old is None:
                    by_sample[key] = value
                elif sample_name.endswith("_created"):
                    by_sample[key] = min(old, value)
                elif summed:
                    by_sample[key] = old + value
                else:
                    by_sample[key] = max(old, value)
    for name, metric in merged.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


class _Merged:
    def __init__(self, directory: Path):
        self.directory = directory

    def collect(self) -> list[Metric]:
        return merge(_read(self.directory))


def render(registry: CollectorRegistry, directory: Path) -> bytes:
    """The Prometheus text of every worker sharing ``directory``, this one's counts fresh."""
    write_snapshot(registry, directory)
    merged = CollectorRegistry(auto_describe=False)
    merged.register(_Merged(directory))  # a collector needs only collect()
    return generate_latest(merged)


class SnapshotWriter:
    """Writes one worker's series to the shared directory every :data:`INTERVAL_S`, in a thread."""

    def __init__(self, registry: CollectorRegistry, directory: Path, interval_s: float = INTERVAL_S):
        self.registry = registry
        self.directory = directory
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write now, then every interval until :meth:`stop`."""
        self.write()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="metrics-snapshot", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write a last time (the counts of a graceful stop are all kept)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.write()

    def write(self) -> None:
        """One snapshot; a failure is logged, never raised (metrics must not stop serving)."""
        try:
            write_snapshot(self.registry, self.directory)
        except OSError as exc:
            log.warning("writing this worker's metrics to %s failed: %s", self.directory, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write()
