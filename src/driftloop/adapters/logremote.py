"""The prediction and feedback logs in an object store (S3; SeaweedFS on the stack).

Writers stay local and cheap: each process appends to its own JSON Lines parts in a local spool
folder exactly as in the embedded default (:mod:`driftloop.adapters.predlog`), and a
:class:`Shipper` thread in the writing process rotates the open part out every
``logs.ship_every_s`` and uploads every rotated-out part as an immutable object, then deletes the
local file. Nothing on the request path touches the network. In the bucket::

    <prefix>/<kind>/date=YYYY-MM-DD/part-<uploaded>-<host>-<pid>-<opened>.jsonl   shipped parts
    <prefix>/<kind>/date=YYYY-MM-DD/compacted-<gen>-<random>.parquet               a compaction
    <prefix>/<kind>/date=YYYY-MM-DD/_manifest.json                                 the commit point
    <prefix>/<kind>/.compaction.lock                                               one run at a time

A shipped part's name begins with the time its upload began (``<uploaded>``), so a poll lists only
the names after the newest one it saw, less :attr:`RemoteLog.margin_s` (uploads in flight, clocks
that disagree), instead of the whole day. The name is fixed before the upload (the local file is
renamed to it), so a crash between upload and delete uploads the same bytes under the same name
again; a renamed part left unshipped for longer than half the margin (the server was down) is
checked (is the object there? does the manifest hold it?) and given a fresh name, so that a poll
still sees it.

Readers read a local cache folder through :mod:`driftloop.adapters.logstore`: before a partition
is read, :meth:`RemoteLog.sync` mirrors the manifest, the Parquet file it names and the shipped
parts it does not name (only those uploaded from the read's ``since`` on, less the margin), between
two reads of the manifest object: when a compaction committed in between, or deleted an object
before it was copied, the sync starts again. Compaction uploads the new Parquet file under a fresh
name, then writes the manifest with a conditional PUT (If-Match the manifest it started from: the
commit point, and the guard against a second run), then deletes the parts and the previous file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol

import pandas as pd

from driftloop.adapters import logstore
from driftloop.adapters.logstore import (
    FEEDBACK,
    MANIFEST,
    PREDICTIONS,
    STEP_CLEANED,
    STEP_MANIFEST_WRITTEN,
    STEP_RENAMED,
    STEP_TEMP_WRITTEN,
    CompactionResult,
    Manifest,
    RetentionResult,
)
from driftloop.adapters.private import private_dir
from driftloop.core.errors import DriftloopError, RunFailed

log = logging.getLogger(__name__)

_PARQUET_PREFIX = "compacted-"
_PART_PREFIX = "part-"
_LOCK = ".compaction.lock"
_SYNC_ATTEMPTS = 20
_STAMP = "%Y%m%dT%H%M%S%fZ"  # 22 characters, sorts as the time it names


class ObjectInfo(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def modified(self) -> datetime: ...


class ObjectStore(Protocol):
    """What the logs need of an object store (:class:`driftloop.adapters.s3.ObjectStore`; tests
    use an in-memory one). Keys are full keys in one bucket."""

    @property
    def url(self) -> str: ...

    def objects(self, prefix: str, start_after: str = "") -> Sequence[ObjectInfo]:
        """Every object under ``prefix`` whose key sorts after ``start_after``, in key order."""
        ...

    def dirs(self, prefix: str) -> list[str]:
        """The "folder" names right under ``prefix``."""
        ...

    def get(self, key: str) -> tuple[bytes, str] | None: ...

    def download(self, key: str, path: Path) -> bool: ...

    def exists(self, key: str) -> bool: ...

    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> str | None: ...

    def delete(self, key: str) -> None: ...


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_STAMP)


def _floor_name(moment: datetime) -> str:
    """The smallest shipped-part name uploaded at ``moment`` or later."""
    return f"{_PART_PREFIX}{_stamp(moment)}"


def _uploaded(name: str) -> datetime | None:
    """When a shipped part's upload began (None: a writer's own name, not renamed for upload yet)."""
    field = name.removeprefix(_PART_PREFIX).split("-", 1)[0]
    if "T" not in field:
        return None
    try:
        return datetime.strptime(field, _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def upload_name(name: str, moment: datetime) -> str:
    """The object name of a spooled part uploaded at ``moment``: ``part-<moment>-<host>-<pid>-<opened>``
    (a renamed part gets a fresh ``<moment>`` and keeps the rest)."""
    rest = name.removeprefix(_PART_PREFIX)
    rest = rest.split("-", 1)[1] if _uploaded(name) is not None else f"{_HOST}-{rest}"
    return f"{_PART_PREFIX}{_stamp(moment)}-{rest}"


def _is_part(name: str) -> bool:
    return name.startswith(_PART_PREFIX) and name.endswith(".jsonl")


class RemoteLog:
    """Both logs under ``prefix`` in an object store, read through a local ``cache`` folder and
    written through a local ``spool`` folder (:class:`driftloop.adapters.logstore.LogStore`).

    ``margin_s``: how late an object may show up in a listing after the time its name begins
    with (uploads in flight, writers' clocks); ``lease_s``: how long a compaction lock holds
    before another run may take it over (and how old an unnamed Parquet object must be before a
    run deletes it as a crashed run's leftover)."""

    immutable_parts = True

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        cache: Path,
        spool: Path,
        *,
        ship_every_s: float = 10.0,
        closed_after_s: float = 900.0,
        margin_s: float = 300.0,
        lease_s: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.store = store
        self.prefix = prefix.strip("/")
        self.cache = Path(cache)
        self.spool = Path(spool)
        self.ship_every_s = ship_every_s
        self.closed_after_s = closed_after_s
        self.margin = timedelta(seconds=margin_s)
        self.lease = timedelta(seconds=lease_s)
        self._now = clock
        self._lock = threading.Lock()
        # Per cached partition: the range of names [first, newest] mirrored (every part in it).
        self._mirrored: dict[Path, tuple[str, str]] = {}

    def __str__(self) -> str:
        return f"{self.store.url} {self.prefix}/"

    def __repr__(self) -> str:
        return f"RemoteLog({self.store.url!r}, {self.prefix!r}, cache={str(self.cache)!r})"

    # -- keys ----------------------------------------------------------------------------------------

    def base(self, kind: str, partition_name: str) -> str:
        """The key prefix of one partition (ends with "/")."""
        return f"{self.prefix}/{kind}/{partition_name}/"

    def _manifest(self, base: str) -> tuple[Manifest, str | None]:
        got = self.store.get(base + MANIFEST)
        if got is None:
            return Manifest(), None
        return Manifest.from_bytes(got[0]), got[1]

    # -- reading (logstore.LogSource) ---------------------------------------------------------------

    def partitions(self, kind: str, first: date | None, last: date | None) -> list[tuple[date, Path]]:
        """The days of one log in the bucket (one listing of "folders"), with their cache folders."""
        out = []
        for name in self.store.dirs(f"{self.prefix}/{kind}/"):
            try:
                day = date.fromisoformat(name.removeprefix("date="))
            except ValueError:
                continue
            if (first is None or day >= first) and (last is None or day <= last):
                out.append((day, self.cache / kind / name))
        return sorted(out)

    def sync(self, partition: Path, since: pd.Timestamp | None) -> None:
        """Mirror one partition into the cache: the manifest, its Parquet file, and the shipped
        parts it does not name that were uploaded from ``since`` (less the margin) on. Parts
        already mirrored are not listed again (a cursor's poll lists only the last margin's)."""
        base = self.base(partition.parent.name, partition.name)
        start = _PART_PREFIX if since is None else _floor_name(since.to_pydatetime() - self.margin)
        with self._lock:
            mirrored = self._mirrored.get(partition)
        list_from = start
        if mirrored is not None and mirrored[0] <= start:
            newest = _uploaded(mirrored[1])
            if newest is not None:
                list_from = max(start, _floor_name(newest - self.margin))
        for _ in range(_SYNC_ATTEMPTS):
            manifest, etag = self._manifest(base)
            listed = [o.key[len(base) :] for o in self.store.objects(base, base + list_from)]
            names = sorted(n for n in listed if _is_part(n))
            if self._manifest(base)[1] != etag:
                continue  # a compaction committed meanwhile: what was listed may be gone
            private_dir(partition)
            if not self._copy(base, partition, manifest, names):
                continue  # an object went between the listing and the copy: a compaction's
            if logstore.Manifest.read(partition) != manifest:
                manifest.write(partition)
            for path in partition.iterdir():
                name = path.name
                stale = (
                    (_is_part(name) and (name in manifest.parts or (name >= list_from and name not in names)))
                    or (name.startswith(_PARQUET_PREFIX) and name != manifest.file)
                    or name.startswith(".tmp-")
                )
                if stale:
                    path.unlink(missing_ok=True)
            with self._lock:
                first = mirrored[0] if mirrored is not None and mirrored[0] <= start else start
                newest_name = max([*names, mirrored[1] if mirrored is not None else "", list_from])
                self._mirrored[partition] = (first, newest_name)
            return
        raise RunFailed(f"{self.store.url}: {base} kept changing while it was copied; try again")

    def _copy(self, base: str, partition: Path, manifest: Manifest, names: list[str]) -> bool:
        wanted = [manifest.file] if manifest.file else []
        wanted += [n for n in names if n not in manifest.parts]
        for name in wanted:
            if (partition / name).exists():
                continue  # objects never change: a copy is the object
            if not self.store.download(base + name, partition / name):
                return False
        return True

    # -- compaction and retention (logstore.LogStore) -------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, kind: str) -> Iterator[bool]:
        """One compaction or retention per log at a time: a lock object created only if absent
        (If-None-Match), taken over (If-Match its ETag) only once its lease ran out."""
        key = f"{self.prefix}/{kind}/{_LOCK}"
        now = self._now()
        body = json.dumps(
            {"owner": f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}", "expires": (now + self.lease).isoformat()}
        ).encode()
        etag = self.store.put(key, body, if_none_match=True)
        if etag is None:
            held = self.store.get(key)
            if held is not None:
                expires = datetime.fromisoformat(json.loads(held[0])["expires"])
                if expires < now:
                    log.warning("taking over the compaction lock %s (expired %s)", key, expires)
                    etag = self.store.put(key, body, if_match=held[1])
            else:
                etag = self.store.put(key, body, if_none_match=True)
        if etag is None:
            yield False
            return
        try:
            yield True
        finally:
            held = self.store.get(key)
            if held is not None and held[1] == etag:  # still ours (not taken over after its lease)
                self.store.delete(key)

    def _logs(self, action: str, skipped: list[str]) -> Iterator[str]:
        for kind in (PREDICTIONS, FEEDBACK):
            with self._locked(kind) as mine:
                if not mine:
                    log.warning("another compaction holds %s/%s; %s skipped it", self, kind, action)
                    skipped.append(kind)
                    continue
                yield kind

    def _listing(self, base: str, manifest: Manifest) -> tuple[list[str], list[str]]:
        """The partition's fresh parts, and the objects a crashed run left (parts the manifest
        holds, Parquet files it does not name that are older than the lease): deleted here."""
        fresh: list[str] = []
        stale: list[str] = []
        now = self._now()
        for obj in self.store.objects(base):
            name = obj.key[len(base) :]
            if _is_part(name):
                (stale if name in manifest.parts else fresh).append(name)
            elif name.startswith(_PARQUET_PREFIX) and name != manifest.file and now - obj.modified > self.lease:
                stale.append(name)
        for name in stale:
            self.store.delete(base + name)
        return sorted(fresh), stale

    def compact(self, *, now: datetime, closed_after_s: float, grace_s: float) -> list[CompactionResult]:
        """Compact every partition with shipped parts (every shipped part is closed: the writer
        rotated it out before it was uploaded)."""
        results = []
        for kind in self._logs("compaction", []):
            for _, partition in self.partitions(kind, None, None):
                result = self.compact_partition(partition)
                if result.parts:
                    results.append(result)
        return results

    def compact_partition(self, partition: Path, on_step: Callable[[str], None] | None = None) -> CompactionResult:
        """Compact one partition's shipped parts and its Parquet file into a new Parquet object;
        crash-safe at every step (a rerun deletes what a crashed one left and compacts again).
        The caller holds the log's lock (:meth:`compact` does)."""
        step = on_step or (lambda _: None)
        kind = partition.parent.name
        base = self.base(kind, partition.name)
        manifest, etag = self._manifest(base)
        fresh, _ = self._listing(base, manifest)
        if not fresh:
            return CompactionResult(kind, partition.name, 0, manifest.rows, 0, manifest.file)
        private_dir(partition)
        if not self._copy(base, partition, manifest, fresh):
            raise RunFailed(f"{self.store.url}: an object under {base} went while it was compacted (another run?)")
        frames = [logstore.read_parquet(partition / manifest.file, kind)] if manifest.file else []
        part_frames, skipped = logstore.read_parts([partition / n for n in fresh], kind)
        frame = pd.concat([*frames, *part_frames], ignore_index=True)
        new = self._commit(partition, manifest, etag, frame, manifest.parts | set(fresh), fresh, step)
        log.info("compacted %d parts of %s into %s (%d rows)", len(fresh), base, new.file, new.rows)
        return CompactionResult(kind, partition.name, len(fresh), new.rows, skipped, new.file)

    def _commit(
        self,
        partition: Path,
        manifest: Manifest,
        etag: str | None,
        frame: pd.DataFrame,
        parts: set[str] | frozenset[str],
        delete: list[str],
        step: Callable[[str], None],
    ) -> Manifest:
        """Upload ``frame`` as the partition's next generation, commit it with one conditional PUT
        of the manifest, then delete ``delete`` (compacted parts) and the previous Parquet file."""
        kind = partition.parent.name
        base = self.base(kind, partition.name)
        generation = manifest.generation + 1
        name: str | None = None
        if len(frame):
            name = f"{_PARQUET_PREFIX}{generation:06d}-{uuid.uuid4().hex[:12]}.parquet"
            tmp = partition / f".tmp-{uuid.uuid4().hex}.parquet"
            logstore.write_parquet(frame, kind, tmp)
            step(STEP_TEMP_WRITTEN)
            self.store.put(base + name, tmp.read_bytes())
            os.replace(tmp, partition / name)
            step(STEP_RENAMED)
        new = Manifest(generation, name, frozenset(parts), len(frame))
        committed = self.store.put(base + MANIFEST, new.to_bytes(), if_match=etag, if_none_match=etag is None)
        if committed is None:
            if name is not None:
                self.store.delete(base + name)
            raise RunFailed(f"{self.store.url}: {base}{MANIFEST} was changed by another run; nothing committed")
        step(STEP_MANIFEST_WRITTEN)
        for part in delete:
            self.store.delete(base + part)
        if manifest.file is not None and manifest.file != name:
            self.store.delete(base + manifest.file)
        step(STEP_CLEANED)
        return new

    def apply_retention(self, *, cutoff: date, keep: set[str], on_step: Callable[[str], None]) -> list[RetentionResult]:
        """:func:`driftloop.adapters.logstore.apply_retention` on the bucket: the same rows go."""
        results: list[RetentionResult] = []
        kept_ids: set[str] = set()
        skipped: list[str] = []
        for kind in self._logs("retention", skipped):
            if kind == FEEDBACK and PREDICTIONS in skipped:
                log.warning("retention skipped the predictions; the labels in %s wait for the next pass", self)
                continue
            for _, partition in self.partitions(kind, None, cutoff - timedelta(days=1)):
                base = self.base(kind, partition.name)
                manifest, etag = self._manifest(base)
                fresh, _ = self._listing(base, manifest)
                if fresh:
                    log.warning("%s has parts not compacted yet; retention waits for them", base)
                    continue
                if manifest.file is None:
                    self._remove_partition(base, partition)
                    continue
                private_dir(partition)
                if not self._copy(base, partition, manifest, []):
                    raise RunFailed(f"{self.store.url}: {base}{manifest.file} is named by the manifest and missing")
                frame = logstore.read_parquet(partition / manifest.file, kind)
                kept = logstore.retained_rows(frame, kind, keep, kept_ids)
                if len(kept) < len(frame):
                    self._commit(partition, manifest, etag, kept, manifest.parts, [], on_step)
                    results.append(RetentionResult(kind, partition.name, len(frame), len(kept)))
                if kept.empty:
                    self._remove_partition(base, partition)
        return results

    def _remove_partition(self, base: str, partition: Path) -> None:
        """Remove a partition that holds no row any more: its manifest goes last, and only when
        no part is left under it (a part shipped meanwhile keeps it)."""
        left = [o.key for o in self.store.objects(base) if not o.key.endswith(MANIFEST)]
        if not left:
            self.store.delete(base + MANIFEST)
        with self._lock:
            self._mirrored.pop(partition, None)
        shutil.rmtree(partition, ignore_errors=True)

    # -- writing -------------------------------------------------------------------------------------

    def shipper(self, kind: str, retire: Callable[[], Path | None], current: Callable[[], Path | None]) -> Shipper:
        """A started :class:`Shipper` for one writer of ``kind`` (``retire`` rotates its open part out)."""
        return Shipper(self, kind, retire, current)


class Shipper:
    """Uploads one writer's spooled parts: every ``ship_every_s`` it rotates the open part out
    (``retire``) and uploads each part that is rotated out, or that no process wrote for
    ``closed_after_s`` (a dead process's), then deletes the local file. When the store does not
    answer, the parts wait in the spool and the next tick tries again (one warning per outage)."""

    def __init__(
        self,
        remote: RemoteLog,
        kind: str,
        retire: Callable[[], Path | None],
        current: Callable[[], Path | None],
        *,
        start: bool = True,
    ):
        self.remote = remote
        self.kind = kind
        self._retire = retire
        self._current = current
        self._mine: set[str] = set()  # parts this writer rotated out: shipped without waiting
        self._failing = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"ship-{kind}", daemon=True)
        if start:
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.remote.ship_every_s):
            self.tick()

    def tick(self) -> int:
        """Rotate the open part out and ship what can go; the number of parts shipped."""
        retired = self._retire()
        if retired is not None:
            self._mine.add(retired.name)
        with self._lock:
            try:
                shipped = self.ship_pending()
            except DriftloopError as exc:
                if not self._failing:
                    log.warning("the %s log stays in %s until the store answers: %s", self.kind, self.remote.spool, exc)
                self._failing = True
                return 0
            except Exception:
                log.exception("shipping the %s log failed; it stays in %s", self.kind, self.remote.spool)
                return 0
        if self._failing:
            log.warning("the %s log is shipped to %s again", self.kind, self.remote.store.url)
            self._failing = False
        return shipped

    def ship_pending(self) -> int:
        directory = self.remote.spool / self.kind
        if not directory.is_dir():
            return 0
        current = self._current()
        now = time.time()
        shipped = 0
        for partition in sorted(directory.glob("date=*")):
            for path in sorted(partition.glob("part-*.jsonl")):
                if path == current:
                    continue
                if path.name not in self._mine:
                    try:
                        if now - path.stat().st_mtime < self.remote.closed_after_s:
                            continue  # another live writer's (or a dead one's, not quiet long enough)
                    except FileNotFoundError:
                        continue
                shipped += self._ship(path)
            if partition != (current.parent if current else None):
                with contextlib.suppress(OSError):
                    partition.rmdir()  # an empty past day
        return shipped

    def _ship(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return 0  # another process's shipper took it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            if os.fstat(fd).st_nlink == 0:
                return 0  # shipped and deleted while this one waited
            base = self.remote.base(self.kind, path.parent.name)
            now = self.remote._now()
            uploaded = _uploaded(path.name)
            if uploaded is not None and uploaded < now - self.remote.margin / 2:
                # Renamed for an upload long ago (a crash, an outage): uploaded already, or
                # compacted and deleted since? Else a fresh name, so that polls still see it.
                if self.remote.store.exists(base + path.name) or path.name in self.remote._manifest(base)[0].parts:
                    self._done(path)
                    return 0
                uploaded = None
            if uploaded is None:
                named = path.with_name(upload_name(path.name, now))
                os.rename(path, named)
                # Still this shipper's to retry at once when the upload fails.
                self._mine.discard(path.name)
                self._mine.add(named.name)
                path = named
            data = b""
            while chunk := os.read(fd, 1 << 20):
                data += chunk
            if data:
                self.remote.store.put(base + path.name, data)
            self._done(path)
            return 1
        finally:
            os.close(fd)

    def _done(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._mine.discard(path.name)

    def close(self, *, also: Path | None = None) -> None:
        """Stop the thread, then rotate and ship once more, ``also`` (the writer's last part, closed
        now) with the rest; what cannot go now stays in the spool for a later shipper."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if also is not None:
            self._mine.add(also.name)
        self.tick()
