"""Labelled text data: reading any CSV/JSON set by configuration, and the scenario's splits.

Inside driftloop every labelled frame has exactly two columns, ``text`` and ``label``; the
configured field names (``data.text_field``, ``data.label_field``) are mapped on read, so nothing
downstream knows which data set it runs on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.settings import DataSettings

TEXT = "text"
LABEL = "label"


class DataError(ValueError):
    """A data file that cannot be read as a labelled text set; the message names file and field."""


def normalise(texts: pd.Series) -> pd.Series:
    """Case- and whitespace-insensitive form of texts: the same question typed twice is one."""
    return texts.astype(str).str.strip().str.lower().str.split().str.join(" ")


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
            f"{path}: missing field(s) {missing}; found {list(frame.columns)} "
            f"(set data.text_field / data.label_field)"
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
        k = int(round(len(idx) * fraction))
        taken.extend(idx[:k].tolist())
    mask = frame.index.isin(taken)
    return frame[mask].reset_index(drop=True), frame[~mask].reset_index(drop=True)


def build_splits(cfg: DataSettings) -> ScenarioSplits:
    train = read_labelled(cfg.train_path, cfg.text_field, cfg.label_field)
    test = read_labelled(cfg.test_path, cfg.text_field, cfg.label_field)
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
    live_new = pd.concat(
        [rest[rest[LABEL].isin(new)], train[train[LABEL].isin(new)]], ignore_index=True
    )
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


def prepare(cfg: DataSettings, out_dir: Path) -> dict[str, Path]:
    """Write the scenario's splits as CSV files (the DVC ``prepare`` stage and the demo's start)."""
    splits = build_splits(cfg)
    paths = {}
    for name in ("train", "eval", "reference", "live_known", "live_new"):
        paths[name] = write_labelled(getattr(splits, name), out_dir / f"{name}.csv")
    (out_dir / "labels.json").write_text(json.dumps(list(splits.labels), indent=0))
    paths["labels"] = out_dir / "labels.json"
    return paths


def read_labels(path: Path) -> tuple[str, ...]:
    return tuple(json.loads(Path(path).read_text()))
