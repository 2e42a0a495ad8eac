"""User text has a lifetime: forget one person's texts everywhere the project keeps them, and
retire the data versions that outlived ``logs.retention_days``; each act is kept in a ledger.

What holds user text, and what :func:`forget` does to it:

- the prediction log (and the labels of the removed predictions in the feedback log): a Parquet
  file becomes a new generation without the rows (crash-safe, like a compaction); a JSON Lines
  part has the bytes of each removed line overwritten with spaces in place (the line's length,
  so every other line keeps its offset, a live writer keeps appending, and readers skip blank
  lines); on S3 the same, object by object, and the local cache's copies with them;
- the DVC data sets that model versions name (``data.md5``, ``reference.md5``) and the files in
  the data set repository's folder: rewritten without the rows and committed as a new version,
  the versions retagged (the old md5 kept in ``privacy.replaced.<tag>``), the old version's bytes
  deleted from the cache and the remote;
- every other copy under the folders given (reports, retrain scratch, local MLflow artifacts):
  CSV rows dropped; any other text file has each occurrence (plain, JSON- or HTML-escaped)
  replaced by ``[FORGOTTEN]``. A folder holding a signed model (``MANIFEST.json``) is not
  touched: a model keeps the n-grams it learnt until it is retrained.

The ledger (``<state_dir>/privacy/ledger.jsonl``, 0600) stores keyed hashes (HMAC-SHA256 with
``ledger.key`` beside it, 0600) of the request ids, pattern and texts removed, never the text.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from driftloop.adapters import logstore
from driftloop.adapters.logremote import RemoteLog
from driftloop.adapters.logstore import FEEDBACK, PREDICTIONS, LogRoot, Manifest
from driftloop.adapters.private import open_private, private_dir, write_private
from driftloop.adapters.versioning import DatasetStore
from driftloop.core.types import ModelRef
from driftloop.data.dataset import LABEL, TEXT, normalise, read_labelled

log = logging.getLogger(__name__)

PLACEHOLDER = "[FORGOTTEN]"
# The lineage tags that name a DVC-versioned set (tasks.logs.VERSIONED_SET_TAGS).
SET_TAGS = ("data.md5", "reference.md5")
_TEXT_SUFFIXES = {".html", ".htm", ".json", ".jsonl", ".md", ".txt", ".csv", ".yaml", ".yml", ".log"}


# -- the ledger ---------------------------------------------------------------------------------------


class Ledger:
    """Append-only JSON Lines record of what was removed and why (0600), with keyed hashes only."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / "ledger.jsonl"
        self._key: bytes | None = None

    def key(self) -> bytes:
        if self._key is None:
            private_dir(self.folder)
            key_path = self.folder / "ledger.key"
            try:
                fd = open_private(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                self._key = key_path.read_bytes()
            else:
                self._key = secrets.token_bytes(32)
                with os.fdopen(fd, "wb") as f:
                    f.write(self._key)
        return self._key

    def digest(self, value: str) -> str:
        """HMAC-SHA256 of ``value`` (a text normalised first): without the key, a short text (a
        card number) cannot be guessed from the ledger."""
        return "hmac-sha256:" + hmac.new(self.key(), value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def record(self, entry: dict[str, Any]) -> None:
        private_dir(self.folder)
        line = json.dumps({"time": datetime.now(UTC).isoformat(), **entry}, sort_keys=True) + "\n"
        fd = open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


# -- what to forget -----------------------------------------------------------------------------------


@dataclass
class Target:
    """The request ids and pattern asked for, and the texts found for them so far (normalised)."""

    request_ids: set[str] = field(default_factory=set)
    pattern: re.Pattern[str] | None = None
    texts: dict[str, str] = field(default_factory=dict)  # normalised -> one original form

    @classmethod
    def of(cls, request_ids: Iterable[str] = (), text_match: str | None = None) -> Target:
        """``text_match`` is a regular expression; one that does not compile is a literal substring."""
        pattern = None
        if text_match:
            try:
                pattern = re.compile(text_match)
            except re.error:
                pattern = re.compile(re.escape(text_match))
        return cls({str(r) for r in request_ids}, pattern)

    def text_rows(self, texts: pd.Series) -> pd.Series:
        """Which of ``texts`` are to go: a text found before, or one the pattern matches."""
        if texts.empty:
            return pd.Series(False, index=texts.index)
        norm = normalise(texts)
        hit = norm.isin(set(self.texts))
        if self.pattern is not None:
            hit |= texts.astype(str).map(lambda t: self.pattern.search(t) is not None).astype(bool)
        return hit

    def learn(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.texts.setdefault(" ".join(str(text).lower().split()), str(text))


@dataclass(frozen=True)
class Removed:
    """What went from one place: a file (or object), a data version, a report."""

    where: str
    rows: int
    detail: str = ""


@dataclass
class ForgetOutcome:
    dry_run: bool
    logs: list[Removed] = field(default_factory=list)
    datasets: list[Removed] = field(default_factory=list)
    files: list[Removed] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return sum(r.rows for r in (*self.logs, *self.datasets, *self.files))


class VersionTags(Protocol):
    """What forgetting and retention need of the registry (:class:`driftloop.adapters.registry.Registry`)."""

    @property
    def model_name(self) -> str: ...

    def versions(self) -> list[dict[str, Any]]: ...

    def set_version_tag(self, ref: ModelRef, key: str, value: str) -> None: ...


# -- logs ---------------------------------------------------------------------------------------------


def find_in_logs(log_root: LogRoot, target: Target) -> pd.DataFrame:
    """Every logged prediction (shadow and failed ones too) of the target: its request ids, its
    texts, and every other request with one of those texts. ``target`` learns the texts."""
    frame = logstore.read_predictions(log_root, include_shadow=True, include_errors=True)
    if frame.empty:
        return frame
    hit = frame["request_id"].isin(target.request_ids) | target.text_rows(frame[TEXT])
    target.learn(frame.loc[hit, TEXT])
    hit |= target.text_rows(frame[TEXT])  # the same text sent under another request id
    return frame[hit]


def _blank_lines(path: Path, offsets: Sequence[int], dry_run: bool) -> None:
    """Overwrite the lines starting at ``offsets`` with spaces (the newline stays), in place."""
    if dry_run or not offsets:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        for at in offsets:
            line = os.pread(fd, 1 << 20, at)
            end = line.find(b"\n")
            length = end if end >= 0 else len(line)
            os.pwrite(fd, b" " * length, at)
        os.fsync(fd)
    finally:
        os.close(fd)


def _partition_hits(
    partition: Path, kind: str, ids: set[str]
) -> tuple[Manifest, pd.DataFrame | None, int, dict[Path, list[int]]]:
    """The partition's manifest, its Parquet rows (None: no file), how many of them go, and the
    offsets of the lines to blank in each JSONL part."""
    manifest = Manifest.read(partition)
    frame = None
    gone = 0
    if manifest.file is not None:
        frame = logstore.read_parquet(partition / manifest.file, kind)
        gone = int(frame["request_id"].isin(ids).sum())
    lines: dict[Path, list[int]] = {}
    for path in sorted(partition.glob("part-*.jsonl")):
        if path.name in manifest.parts:
            continue
        read = logstore._read_part(path)
        offsets = [at for rec, at in zip(read.records, read.offsets, strict=True) if str(rec.get("request_id")) in ids]
        if offsets:
            lines[path] = offsets
    return manifest, frame, gone, lines


def forget_local_logs(root: Path, ids: set[str], outcome: ForgetOutcome) -> None:
    """Remove the rows of ``ids`` from both logs under ``root`` (under each log's compaction lock)."""
    for kind, directory in logstore._locked_logs(root, "forget", outcome.skipped):
        for _, partition in logstore.partitions(directory):
            manifest, frame, gone, lines = _partition_hits(partition, kind, ids)
            if gone and frame is not None:
                outcome.logs.append(Removed(str(partition / str(manifest.file)), gone, "parquet: new generation"))
                if not outcome.dry_run:
                    kept = frame[~frame["request_id"].isin(ids)]
                    logstore._replace(partition, kind, manifest, kept, manifest.parts, lambda _: None)
            for path, offsets in lines.items():
                outcome.logs.append(Removed(str(path), len(offsets), "jsonl: lines blanked in place"))
                _blank_lines(path, offsets, outcome.dry_run)
    if outcome.skipped:
        outcome.skipped[:] = [
            f"{root}/{k}: another compaction holds its lock; run forget again" for k in outcome.skipped
        ]


def forget_remote_logs(remote: RemoteLog, ids: set[str], outcome: ForgetOutcome) -> None:
    """The same on the bucket: a new Parquet generation committed like a compaction's; a shipped
    part with removed lines is put again, blanked, under its own name; the spool (local parts not
    shipped yet) is blanked in place; the cache's copies follow."""
    skipped: list[str] = []
    for kind in remote._logs("forget", skipped):
        for _, partition in remote.partitions(kind, None, None):
            base = remote.base(kind, partition.name)
            remote.sync(partition, None)
            manifest, etag = remote._manifest(base)
            _, frame, gone, lines = _partition_hits(partition, kind, ids)
            if gone and frame is not None:
                outcome.logs.append(
                    Removed(f"{remote.store.url}/{base}{manifest.file}", gone, "parquet: new generation")
                )
                if not outcome.dry_run:
                    kept = frame[~frame["request_id"].isin(ids)]
                    remote._commit(partition, manifest, etag, kept, manifest.parts, [], lambda _: None)
                    remote.sync(partition, None)  # the cache drops its copy of the old generation
            for path, offsets in lines.items():
                outcome.logs.append(
                    Removed(f"{remote.store.url}/{base}{path.name}", len(offsets), "jsonl object: put again, blanked")
                )
                if not outcome.dry_run:
                    _blank_lines(path, offsets, False)
                    remote.store.put(base + path.name, path.read_bytes())
    outcome.skipped += [f"{remote}{k}: another compaction holds its lock; run forget again" for k in skipped]
    if remote.spool.exists():
        spool = ForgetOutcome(outcome.dry_run)
        for kind in (PREDICTIONS, FEEDBACK):
            for _, partition in logstore.partitions(remote.spool / kind):
                _, _, _, lines = _partition_hits(partition, kind, ids)
                for path, offsets in lines.items():
                    spool.logs.append(Removed(str(path), len(offsets), "spooled part: lines blanked in place"))
                    _blank_lines(path, offsets, outcome.dry_run)
        outcome.logs += spool.logs


def forget_logs(log_root: LogRoot, ids: set[str], outcome: ForgetOutcome) -> None:
    if not ids:
        return
    if isinstance(log_root, RemoteLog):
        forget_remote_logs(log_root, ids, outcome)
    else:
        forget_local_logs(Path(log_root), ids, outcome)  # type: ignore[arg-type]


# -- data versions ------------------------------------------------------------------------------------


def _versions_by_md5(registry: VersionTags | None) -> dict[str, list[tuple[ModelRef, str]]]:
    out: dict[str, list[tuple[ModelRef, str]]] = {}
    if registry is None:
        return out
    for v in registry.versions():
        for tag in SET_TAGS:
            md5 = v["tags"].get(tag)
            if md5:
                out.setdefault(md5, []).append((ModelRef(registry.model_name, str(v["version"])), tag))
    return out


def forget_in_datasets(
    datasets: DatasetStore,
    registry: VersionTags | None,
    target: Target,
    scratch: Path,
    outcome: ForgetOutcome,
    *,
    delete_remote: Callable[[str], None] | None = None,
) -> None:
    """Rewrite every data version that model versions name, and every data file in the data set
    repository's folder, without the target's rows; retag the versions; drop the old bytes."""
    named = _versions_by_md5(registry)
    workspace = datasets.workspace()
    md5s = sorted(set(named) | set(workspace.values()))
    for md5 in md5s:
        try:
            path = datasets.restore(md5, private_dir(scratch) / f"{md5}.csv")
        except Exception as exc:  # noqa: BLE001  a version already retired: nothing of it is left to read
            outcome.skipped.append(f"data version {md5}: cannot be restored ({type(exc).__name__}); not checked")
            continue
        frame = read_labelled(path, TEXT, LABEL)
        hit = target.text_rows(frame[TEXT])
        if not hit.any():
            path.unlink(missing_ok=True)
            continue
        target.learn(frame.loc[hit, TEXT])
        users = named.get(md5, [])
        names = [p for p, m in workspace.items() if m == md5]
        detail = ", ".join([f"{ref} {tag}" for ref, tag in users] + [p.name for p in names])
        if outcome.dry_run:
            outcome.datasets.append(Removed(f"dvc:{md5}", int(hit.sum()), detail))
            path.unlink(missing_ok=True)
            continue
        kept = frame[~hit].reset_index(drop=True)
        # The name the file had in the repository folder (so that folder holds the new one), else a
        # name of its own, whose folder copy is removed (restores go by md5).
        name = names[0].name.removesuffix(".csv") if names else f"forget-{md5[:12]}"
        new = datasets.commit(kept, name)
        for extra in names[1:]:
            write_private(extra, Path(new.path).read_bytes(), durable=False)
        if not names:
            Path(new.path).unlink(missing_ok=True)
            Path(new.path + ".dvc").unlink(missing_ok=True)
        for ref, tag in users:
            assert registry is not None  # noqa: S101  users come from the registry
            registry.set_version_tag(ref, tag, new.md5)
            registry.set_version_tag(ref, f"privacy.replaced.{tag}", md5)
            rows_tag = tag.replace(".md5", ".rows")
            registry.set_version_tag(ref, rows_tag, str(new.rows))
        if new.md5 != md5:
            datasets.drop(md5)
            if delete_remote is not None:
                delete_remote(md5)
        outcome.datasets.append(Removed(f"dvc:{md5}", int(hit.sum()), f"now dvc:{new.md5} ({detail})"))
        path.unlink(missing_ok=True)


# -- other copies: reports, scratch files, local artifacts ----------------------------------------------


def _needles(target: Target) -> list[bytes]:
    out: set[bytes] = set()
    for text in target.texts.values():
        if len(text) < 4:
            continue  # a stray short text would hit markup everywhere
        for form in (
            text,
            json.dumps(text)[1:-1],
            json.dumps(text, ensure_ascii=False)[1:-1],
            html.escape(text),
            html.escape(json.dumps(text)[1:-1]),
        ):
            out.add(form.encode("utf-8", "surrogatepass"))
    return sorted(out, key=len, reverse=True)


def _signed_model_dirs(root: Path) -> set[Path]:
    return {p.parent for p in root.rglob("MANIFEST.json")}


def scrub_files(folders: Iterable[Path], target: Target, outcome: ForgetOutcome) -> None:
    """Remove the target's texts from every text file under ``folders`` (see the module's docstring)."""
    needles = _needles(target)
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        models = _signed_model_dirs(folder)
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            if path.suffix.lower() not in _TEXT_SUFFIXES or any(m in path.parents for m in models):
                continue
            if path.suffix.lower() == ".csv" and _scrub_csv(path, target, outcome):
                continue
            _scrub_bytes(path, needles, target.pattern, outcome)


def _scrub_csv(path: Path, target: Target, outcome: ForgetOutcome) -> bool:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception:  # noqa: BLE001  not a table: scrubbed as text
        return False
    if TEXT not in frame.columns:
        return False
    hit = target.text_rows(frame[TEXT])
    if hit.any():
        outcome.files.append(Removed(str(path), int(hit.sum()), "csv rows dropped"))
        if not outcome.dry_run:
            write_private(path, frame[~hit].to_csv(index=False).encode(), durable=False)
    return True


def _scrub_bytes(path: Path, needles: list[bytes], pattern: re.Pattern[str] | None, outcome: ForgetOutcome) -> None:
    data = path.read_bytes()
    count = 0
    for needle in needles:
        if needle in data:
            count += data.count(needle)
            data = data.replace(needle, PLACEHOLDER.encode())
    if pattern is not None:
        text = data.decode("utf-8", "surrogateescape")
        text, n = pattern.subn(PLACEHOLDER, text)
        if n:
            count += n
            data = text.encode("utf-8", "surrogateescape")
    if count:
        outcome.files.append(Removed(str(path), count, "occurrences replaced"))
        if not outcome.dry_run:
            write_private(path, data, durable=False)


# -- forget: all of it ---------------------------------------------------------------------------------


def forget(
    target: Target,
    *,
    log_root: LogRoot,
    datasets: DatasetStore,
    registry: VersionTags | None,
    folders: Sequence[Path],
    scratch: Path,
    ledger: Ledger,
    dry_run: bool = False,
    delete_remote: Callable[[str], None] | None = None,
) -> ForgetOutcome:
    """Remove the target's texts from the logs, the data versions and the files under ``folders``;
    record it in ``ledger`` (not a dry run). The data versions are searched for the texts the logs
    held and for the pattern; the files for every text found in either."""
    outcome = ForgetOutcome(dry_run)
    found = find_in_logs(log_root, target)
    ids = set(target.request_ids) | set(found["request_id"]) if len(found) else set(target.request_ids)
    forget_logs(log_root, ids, outcome)
    forget_in_datasets(datasets, registry, target, scratch, outcome, delete_remote=delete_remote)
    scrub_files(folders, target, outcome)
    with contextlib.suppress(OSError):
        for leftover in Path(scratch).glob("*.csv"):
            leftover.unlink()
    if not dry_run:
        ledger.record(
            {
                "action": "forget",
                "request_ids": sorted(ledger.digest(r) for r in target.request_ids),
                "pattern": ledger.digest(target.pattern.pattern) if target.pattern is not None else None,
                "texts": sorted(ledger.digest(t) for t in target.texts),
                "logs": [asdict(r) for r in outcome.logs],
                "datasets": [asdict(r) for r in outcome.datasets],
                "files": [asdict(r) for r in outcome.files],
                "skipped": outcome.skipped,
            }
        )
    return outcome


# -- retention of data versions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Retired:
    """What retention did to one data version."""

    md5: str
    versions: tuple[str, ...]  # "v3 data.md5", ...
    newest: str  # ISO time of the newest model version that names it
    action: str  # deleted | redacted | kept-in-use


def retire_data_versions(
    datasets: DatasetStore,
    registry: VersionTags,
    *,
    retention_days: int,
    redact: Callable[[str], str] | None,
    scratch: Path,
    ledger: Ledger,
    now: datetime | None = None,
    dry_run: bool = False,
    delete_remote: Callable[[str], None] | None = None,
    in_use_aliases: Sequence[str] = ("champion", "challenger"),
) -> list[Retired]:
    """Data versions named only by model versions registered more than ``retention_days`` ago:

    - named by a version that holds an alias (the champion's set is what the next retrain starts
      from, its reference what monitoring compares with): kept, but rebuilt from redacted text
      (``redact``) when redaction changes it (a set made before redaction was on), retagged;
    - otherwise deleted (cache and remote); the versions keep the md5 in
      ``privacy.retired.<tag>`` and their ``<tag>`` is emptied, so nothing tries to restore it (a
      retrain from such a version starts from the data set's training split).

    Each act is a ledger entry (what, which versions, why)."""
    now = now or datetime.now(UTC)
    cutoff = now.timestamp() * 1000 - retention_days * 86_400_000
    newest: dict[str, float] = {}
    users: dict[str, list[tuple[ModelRef, str]]] = {}
    in_use: set[str] = set()
    for v in registry.versions():
        for tag in SET_TAGS:
            md5 = v["tags"].get(tag)
            if not md5:
                continue
            newest[md5] = max(newest.get(md5, 0.0), float(v.get("created") or 0))
            users.setdefault(md5, []).append((ModelRef(registry.model_name, str(v["version"])), tag))
            if set(v.get("aliases") or ()) & set(in_use_aliases):
                in_use.add(md5)
    out: list[Retired] = []
    workspace = datasets.workspace()
    for md5, created in sorted(newest.items()):
        if created >= cutoff:
            continue
        who = tuple(f"v{ref.version} {tag}" for ref, tag in users[md5])
        when = datetime.fromtimestamp(created / 1000, UTC).isoformat()
        if md5 in in_use:
            action = "kept-in-use"
            if redact is not None:
                path = datasets.restore(md5, private_dir(scratch) / f"{md5}.csv")
                frame = read_labelled(path, TEXT, LABEL)
                redacted = frame.assign(**{TEXT: frame[TEXT].astype(str).map(redact)})
                path.unlink(missing_ok=True)
                if not redacted[TEXT].equals(frame[TEXT].astype(str)):
                    action = "redacted"
                    if not dry_run:
                        new = datasets.commit(redacted, f"retention-{md5[:12]}")
                        Path(new.path).unlink(missing_ok=True)
                        Path(new.path + ".dvc").unlink(missing_ok=True)
                        for ref, tag in users[md5]:
                            registry.set_version_tag(ref, tag, new.md5)
                            registry.set_version_tag(ref, f"privacy.replaced.{tag}", md5)
                        datasets.drop(md5)
                        if delete_remote is not None:
                            delete_remote(md5)
        else:
            action = "deleted"
            if not dry_run:
                datasets.drop(md5)
                if delete_remote is not None:
                    delete_remote(md5)
                for ref, tag in users[md5]:
                    registry.set_version_tag(ref, f"privacy.retired.{tag}", md5)
                    registry.set_version_tag(ref, tag, "")
        if not dry_run and action != "kept-in-use":
            for copy in [p for p, m in workspace.items() if m == md5]:  # restores go by md5
                copy.unlink(missing_ok=True)
                Path(f"{copy}.dvc").unlink(missing_ok=True)
        retired = Retired(md5, who, when, action)
        out.append(retired)
        if not dry_run and action != "kept-in-use":
            ledger.record(
                {
                    "action": f"retention:{action}",
                    "md5": md5,
                    "versions": list(who),
                    "newest_version_created": when,
                    "reason": f"named only by model versions registered more than {retention_days} days ago",
                }
            )
    return out
