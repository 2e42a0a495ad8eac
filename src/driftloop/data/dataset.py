"""Labelled text data: reading any CSV/JSON set by configuration, and the scenario's splits.

Inside driftloop every labelled frame has exactly two columns, ``text`` and ``label``; the
configured field names (``data.text_field``, ``data.label_field``) are mapped on read, so nothing
downstream knows which data set it runs on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.config.settings import DataSettings
from driftloop.core.errors import InputError

TEXT = "text"
LABEL = "label"


class DataError(InputError, ValueError):
    """A data file that cannot be read as a labelled text set; the message names file and field."""


def normalise(texts: pd.Series) -> pd.Series:
    """Case- and whitespace-insensitive form of texts: the same question typed twice is one."""
    # One Python call per text: about three times faster than the same steps through ``.str``.
    return pd.Series([" ".join(t.lower().split()) for t in texts.astype(str)], index=texts.index, dtype=object)


def read_labelled(path: Path | str, text_field: str = TEXT, label_field: str = LABEL) -> pd.DataFrame:
    """Read a CSV, JSON (a list of records) or JSON Lines file into a ``text``/``label`` frame.

    Values are kept as strings exactly as written (no NaN guessing), so validation sees an empty
    text as empty rather than as a float.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        elif suffix in {".jsonl", ".ndjson"}:
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".json":
            records = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(records, dict):
                # {"data": [...]} or similar: a single list-valued key
                lists = [v for v in records.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise DataError(f"{path}: expected a list of records (or one key holding it)")
                records = lists[0]
            frame = pd.DataFrame.from_records(records)
        else:
            raise DataError(f"{path}: unsupported format '{suffix}' (use .csv, .json or .jsonl)")
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot parse: {exc}") from None
    missing = [f for f in (text_field, label_field) if f not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing field(s) {missing}; found {list(frame.columns)} (set data.text_field / data.label_field)"
        )
    out = frame[[text_field, label_field]].rename(columns={text_field: TEXT, label_field: LABEL})
    out[TEXT] = out[TEXT].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    out[LABEL] = out[LABEL].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return out.reset_index(drop=True)


def write_labelled(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame[[TEXT, LABEL]].to_csv(path, index=False)
    return path


@dataclass(frozen=True)
class ScenarioSplits:
    """The data a run of the loop starts from.

    - ``train``: the training split without the new labels (what v1 learns from).
    - ``eval``: held-out, stratified part of the test split, new labels included; no text of it
      appears in any training set.
    - ``reference``: production-like texts of the known labels (from the test split, disjoint
      from ``eval``), what monitoring compares windows with.
    - ``live_known`` / ``live_new``: traffic pools for the simulator; ``live_new`` holds the new
      labels' texts (the training split's rows of those labels plus the test split's remainder).
    """

    train: pd.DataFrame
    eval: pd.DataFrame
    reference: pd.DataFrame
    live_known: pd.DataFrame
    live_new: pd.DataFrame
    labels: tuple[str, ...]
    new_labels: tuple[str, ...]


def _stratified_take(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    taken = []
    for _, group in frame.groupby(LABEL, sort=True):
        idx = group.index.to_numpy().copy()
        rng.shuffle(idx)
        k = round(len(idx) * fraction)
        taken.extend(idx[:k].tolist())
    mask = frame.index.isin(taken)
    return frame[mask].reset_index(drop=True), frame[~mask].reset_index(drop=True)


def _raw_path(cfg: DataSettings, setting: str) -> Path:
    """``cfg.train_path`` or ``cfg.test_path`` (by ``setting``); unset is an error."""
    path: Path | None = getattr(cfg, setting)
    if path is None:
        raise DataError(f"data.{setting} is not set (configs/base.yaml or an overlay names the raw file)")
    return Path(path)


def build_splits(cfg: DataSettings) -> ScenarioSplits:
    train = read_labelled(_raw_path(cfg, "train_path"), cfg.text_field, cfg.label_field)
    test = read_labelled(_raw_path(cfg, "test_path"), cfg.text_field, cfg.label_field)
    for frame, path in ((train, cfg.train_path), (test, cfg.test_path)):
        if frame.empty:
            raise DataError(f"{path}: no rows (a header alone is an empty data set)")
    labels = tuple(sorted(set(train[LABEL]) | set(test[LABEL])))
    unknown = sorted(set(cfg.new_labels) - set(labels))
    if unknown:
        raise DataError(f"data.new_labels: {unknown} are not labels of {cfg.train_path}")
    new = set(cfg.new_labels)
    # Raw data stays as published; the working splits drop repeated texts, and a text in both
    # raw splits would leak, so it stays on the training side only.
    train = train.loc[~normalise(train[TEXT]).duplicated()].reset_index(drop=True)
    test = test.loc[~normalise(test[TEXT]).isin(set(normalise(train[TEXT])))]
    test = test.loc[~normalise(test[TEXT]).duplicated()].reset_index(drop=True)
    eval_set, rest = _stratified_take(test, cfg.eval_fraction, cfg.seed)
    rest_known = rest[~rest[LABEL].isin(new)].reset_index(drop=True)
    reference, live_known = _stratified_take(rest_known, cfg.reference_fraction, cfg.seed + 1)
    live_new = pd.concat([rest[rest[LABEL].isin(new)], train[train[LABEL].isin(new)]], ignore_index=True)
    live_new = live_new.loc[~normalise(live_new[TEXT]).duplicated()].reset_index(drop=True)
    v1_train = train[~train[LABEL].isin(new)].reset_index(drop=True)
    return ScenarioSplits(
        train=v1_train,
        eval=eval_set,
        reference=reference,
        live_known=live_known,
        live_new=live_new,
        labels=labels,
        new_labels=tuple(sorted(new)),
    )


SPLIT_FILES = ("train", "eval", "reference", "live_known", "live_new")
# Bumped whenever build_splits changes what it makes of the same inputs: old prepared splits
# then get a new key and are rebuilt, never reused.
SPLIT_FORMAT = 1
MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def raw_hashes(cfg: DataSettings) -> dict[str, str]:
    """The content hash of each raw file, by role (``train``, ``test``); a missing one is an error."""
    out = {}
    for role, setting in (("train", "train_path"), ("test", "test_path")):
        path = _raw_path(cfg, setting)
        if not path.is_file():
            raise DataError(f"{path}: file not found (data.{setting})")
        out[role] = file_sha256(path)
    return out


def data_key(cfg: DataSettings, hashes: Mapping[str, str]) -> str:
    """What made the prepared splits: the data settings that shape them and the raw files' content.

    ``data.name`` is a label for people and plays no part (the same files split the same way are
    the same data, whatever they are called)."""
    shape = {
        "format": SPLIT_FORMAT,
        "raw": dict(sorted(hashes.items())),
        "train_path": str(cfg.train_path),
        "test_path": str(cfg.test_path),
        "text_field": cfg.text_field,
        "label_field": cfg.label_field,
        "new_labels": sorted(cfg.new_labels),
        "eval_fraction": cfg.eval_fraction,
        "reference_fraction": cfg.reference_fraction,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PreparedData:
    """Prepared splits of one data set, in a folder named by their key.

    Index it by split name (``prepared["train"]``, ``prepared["labels"]``) for the file's path."""

    name: str
    key: str
    dir: Path
    raw: Mapping[str, str] = field(default_factory=dict)  # role -> sha256 of the raw file
    rows: Mapping[str, int] = field(default_factory=dict)  # split -> rows written

    def __getitem__(self, split: str) -> Path:
        if split == "labels":
            return self.dir / "labels.json"
        if split not in SPLIT_FILES:
            raise KeyError(split)
        return self.dir / f"{split}.csv"

    def items(self) -> list[tuple[str, Path]]:
        """Every split's file, the label list last."""
        return [(name, self[name]) for name in (*SPLIT_FILES, "labels")]

    def read(self, split: str) -> pd.DataFrame:
        return read_labelled(self[split])

    def lineage(self) -> dict[str, str]:
        """Tags for a model version and its run: which data set, which key, which raw files."""
        return {
            "data.name": self.name,
            "data.key": self.key,
            **{f"data.raw.{role}.sha256": digest for role, digest in self.raw.items()},
        }


def require_same_data(prepared: PreparedData, tags: Mapping[str, str], who: str) -> None:
    """Refuse to mix a model's data with another data set's: ``who`` (a model version) was
    trained on the data its ``data.key`` tag names; the configuration now prepares ``prepared``.
    Versions registered before the tag existed are not checked."""
    key = tags.get("data.key")
    if key and key != prepared.key:
        raise DataError(
            f"{who} was trained on data set {tags.get('data.name', '?')!r} (data key {key}), but data.* now "
            f"prepares {prepared.name!r} (data key {prepared.key}, from {prepared.dir}): train a first model "
            f"on it (`driftloop train`), or give it its own registry.model_name"
        )


def _write_splits(cfg: DataSettings, out_dir: Path, key: str, hashes: Mapping[str, str]) -> PreparedData:
    splits = build_splits(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in SPLIT_FILES:
        frame = getattr(splits, name)
        write_labelled(frame, out_dir / f"{name}.csv")
        rows[name] = len(frame)
    (out_dir / "labels.json").write_text(json.dumps(list(splits.labels), indent=0))
    prepared = PreparedData(cfg.name, key, out_dir, dict(hashes), rows)
    manifest = {
        "name": cfg.name,
        "key": key,
        "raw": dict(hashes),
        "rows": rows,
        "settings": cfg.model_dump(mode="json"),
    }
    # Written last: a folder without its manifest is a build that did not finish.
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return prepared


def prepare(cfg: DataSettings, out_dir: Path) -> PreparedData:
    """Write the scenario's splits into ``out_dir`` as they are now (the DVC ``prepare`` stage)."""
    hashes = raw_hashes(cfg)
    return _write_splits(cfg, Path(out_dir), data_key(cfg, hashes), hashes)


def ensure_prepared(cfg: DataSettings, root: Path) -> PreparedData:
    """The splits for the data settings as configured now, built once per key under ``root``.

    The key covers the settings that shape the splits and the raw files' hashes, so another data
    set, another seed or an edited raw file gets its own folder and is built afresh; switching
    back finds the earlier folder again. A missing raw file is an error, whatever was built before.
    A build goes to a temporary folder that is renamed into place once complete: a crash never
    leaves splits that look finished."""
    hashes = raw_hashes(cfg)
    key = data_key(cfg, hashes)
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in (cfg.name or "data"))[:40]
    final = Path(root) / f"{slug}-{key}"
    found = _read_complete(final, key)
    if found is not None:
        return found
    Path(root).mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{slug}-{key}-", dir=root))
    try:
        _write_splits(cfg, building, key, hashes)
        if final.exists() and _read_complete(final, key) is None:
            shutil.rmtree(final)  # an unfinished folder left by a crash before manifests existed
        try:
            os.replace(building, final)
        except OSError:
            if _read_complete(final, key) is None:  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    found = _read_complete(final, key)
    if found is None:
        raise DataError(f"{final}: the prepared splits could not be completed")
    return found


def _read_complete(folder: Path, key: str) -> PreparedData | None:
    """The prepared data in ``folder`` if its build finished for ``key``, else None."""
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or not all((folder / f"{n}.csv").exists() for n in SPLIT_FILES):
        return None
    return PreparedData(meta["name"], key, folder, meta.get("raw", {}), meta.get("rows", {}))


def read_labels(path: Path) -> tuple[str, ...]:
    return tuple(json.loads(Path(path).read_text()))
